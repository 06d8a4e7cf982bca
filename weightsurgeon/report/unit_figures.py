"""Layers x heads (or experts) heatmaps: one figure per module kind that has units.

Each figure shows the relative L2 ||B - A|| / ||A|| of every head (or expert) of every
layer, tuned models side by side on one colour scale (logarithmic when the values span
more than LOG_SPAN). Sized for 64 layers x 64 heads and 512 experts: cells stay at least
a few pixels, tick labels thin out.

Drawn from the report's unit columns (report/units.UnitTable): one small layers x units
array per tuned model, never an object per expert.
"""
from __future__ import annotations

import math
from typing import Any

LOG_SPAN = 30.0


def unit_modules(report: Any) -> list[str]:
    """Module kinds with per-layer unit rows, in the report's module order."""
    import numpy as np

    from weightsurgeon.report.model import sort_key

    units = report.units
    codes = np.unique(units.module[units.layer >= 0]) if len(units) else []
    return sorted((units.module_names[c] for c in codes), key=lambda m: sort_key(0, None, m))


def unit_matrices(report: Any, module: str) -> tuple[list[int], str, dict[str, Any]] | None:
    """(layers, unit kind, {tuned label: layers x units array of relative L2, NaN where no row}) of one module kind."""
    import numpy as np

    units = report.units
    rows = np.flatnonzero(units.where(module=module, per_layer=True))
    if not rows.size:
        return None
    layer, index, rel, tuned = units.layer[rows], units.index[rows], units.rel_l2[rows], units.tuned[rows]
    layers = np.unique(layer)
    count = int(index.max()) + 1
    kind = units.kind_names[int(units.kind[rows[0]])]
    at = np.searchsorted(layers, layer)
    mats = {}
    for label in report.labels:
        code = units.code(units.tuned_names, label)
        mine = tuned == code
        if not mine.any():
            continue
        mat = np.full((len(layers), count), np.nan)
        mat[at[mine], index[mine]] = rel[mine]
        mats[label] = mat
    return layers.tolist(), kind, mats


def figure_unit_heatmap(report: Any, module: str):
    """Layers x units of one module kind; None when it has no per-layer unit rows."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm, Normalize

    from weightsurgeon.report.figures import _grid, _new_figure, _short, heat_image

    found = unit_matrices(report, module)
    if found is None:
        return None
    layers, kind, mats = found
    labels = list(mats)
    count = next(iter(mats.values())).shape[1]
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
    for ax, label in zip(axes, labels):
        heat_image(ax, mats[label], cmap, norm)
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
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[:len(labels)]), shrink=0.9, pad=0.02)
    cbar.set_label("relative L2  ‖B − A‖ / ‖A‖" + ("  (log scale)" if log else ""))
    note = "; grey: unchanged" if any(np.isnan(m).any() for m in mats.values()) else ""
    fig.suptitle(f"{module}: relative change per layer and {kind}{note}", fontsize=12)
    return fig


def unit_figure_makers(report: Any) -> list[tuple[str, Any]]:
    """(file stem, a function drawing the Figure) per module kind with units: ``heads_<module>`` or
    ``experts_<module>``."""
    units = report.units
    out = []
    for module in unit_modules(report):
        kind = units.kind_names[int(units.kind[units.where(module=module, per_layer=True)][0])]
        out.append((f"{kind}s_{module}", lambda module=module: figure_unit_heatmap(report, module)))
    return out
