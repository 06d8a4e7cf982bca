"""Layers x heads (or experts) heatmaps: one figure per module kind that has units.

Each figure shows the relative L2 ||B - A|| / ||A|| of every head (or expert) of every
layer, tuned models side by side on one colour scale (logarithmic when the values span
more than LOG_SPAN). Sized for 64 layers x 64 heads and 128 experts: cells stay at least
a few pixels, tick labels thin out.
"""
from __future__ import annotations

import math
from typing import Any

LOG_SPAN = 30.0


def unit_modules(report: Any) -> list[str]:
    """Module kinds with per-layer unit rows, in the report's module order."""
    from weightsurgeon.report.model import sort_key

    found = {u.module for u in report.units if u.layer is not None}
    return sorted(found, key=lambda m: sort_key(0, None, m))


def figure_unit_heatmap(report: Any, module: str):
    """Layers x units of one module kind; None when it has no per-layer unit rows."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize

    from weightsurgeon.report.figures import _grid, _new_figure, _short

    rows = [u for u in report.units if u.module == module and u.layer is not None]
    if not rows:
        return None
    labels = [label for label in report.labels if any(u.tuned == label for u in rows)]
    layers = sorted({u.layer for u in rows})
    count = max(u.index for u in rows) + 1
    kind = rows[0].kind
    where = {layer: i for i, layer in enumerate(layers)}
    mats = {label: np.full((len(layers), count), np.nan) for label in labels}
    for u in rows:
        mats[u.tuned][where[u.layer], u.index] = u.rel_l2
    finite = np.concatenate([m[np.isfinite(m)] for m in mats.values()])
    positive = finite[finite > 0]
    log = positive.size >= 2 and positive.max() / positive.min() > LOG_SPAN
    if log:
        norm = LogNorm(vmin=positive.min(), vmax=positive.max())
        mats = {k: np.where(m > 0, m, np.nan) for k, m in mats.items()}
    else:
        norm = Normalize(vmin=0.0, vmax=float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
    cmap = colormaps["magma_r"].with_extremes(bad="#dddddd")
    nrows, ncols = _grid(len(labels), 2 if count > 48 else 3)
    height = min(max(3.0, 0.13 * len(layers) + 1.4), 11.0)
    width_each = min(max(3.2, 0.085 * count + 1.4), 12.0)
    fig = _new_figure(width_each * ncols + 1.4, height * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    image = None
    for ax, label in zip(axes, labels):
        image = ax.imshow(mats[label], aspect="auto", interpolation="nearest", cmap=cmap, norm=norm, origin="upper")
        xstep = max(1, math.ceil(count / 16))
        ax.set_xticks(range(0, count, xstep), [str(i) for i in range(0, count, xstep)], fontsize=7)
        ystep = max(1, math.ceil(len(layers) / 24))
        ax.set_yticks(range(0, len(layers), ystep), [str(layers[i]) for i in range(0, len(layers), ystep)], fontsize=7)
        ax.set_xlabel(kind)
        ax.set_title(_short(label, 40), fontsize=10)
        ax.tick_params(length=2)
    for ax in axes[len(labels):]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel("layer")
    cbar = fig.colorbar(image, ax=list(axes[:len(labels)]), shrink=0.9, pad=0.02)
    cbar.set_label("relative L2  ‖B − A‖ / ‖A‖" + ("  (log scale)" if log else ""))
    note = "; grey: unchanged" if any(np.isnan(m).any() for m in mats.values()) else ""
    fig.suptitle(f"{module}: relative change per layer and {kind}{note}", fontsize=12)
    return fig


def unit_figures(report: Any) -> list[tuple[str, Any]]:
    """(file stem, Figure) per module kind with units: ``heads_<module>`` or ``experts_<module>``."""
    out = []
    for module in unit_modules(report):
        fig = figure_unit_heatmap(report, module)
        if fig is not None:
            kind = next(u.kind for u in report.units if u.module == module)
            out.append((f"{kind}s_{module}", fig))
    return out
