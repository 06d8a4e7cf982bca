"""Layers x heads and layers x experts heatmaps.

- ``heads_<module>``: the relative L2 ||B - A|| / ||A|| of every attention head of one module
  kind (q_proj, k_proj, v_proj, o_proj: their heads differ in number and meaning), per layer;
- ``experts``: the relative L2 of every routed expert per layer, its matrices pooled
  (sqrt(sum ||dW||^2 / sum ||W||^2) over gate, up and down, or a fused gate_up and down):
  one figure however many expert matrices there are. The per-layer, per-module-kind view of
  the experts is in the module figures (l2_by_layer, rel_l2_heatmap); each matrix's own row
  is in report_heads.csv.

Tuned models side by side on one colour scale (logarithmic when the values span more than
LOG_SPAN). Sized for 64 layers x 64 heads and 512 experts: cells stay at least a few pixels,
tick labels thin out. Drawn from the report's unit columns (report/units.UnitTable): one
small layers x units array per tuned model, never an object per expert.
"""
from __future__ import annotations

import math
from typing import Any

LOG_SPAN = 30.0
EXPERTS = "experts"  # the pooled experts figure's file stem


def head_modules(report: Any) -> list[str]:
    """Module kinds with per-layer head rows, in the report's module order."""
    import numpy as np

    from weightsurgeon.report.model import sort_key

    units = report.units
    heads = units.where(kind="head", per_layer=True)
    codes = np.unique(units.module[heads]) if heads.any() else []
    return sorted((units.module_names[c] for c in codes), key=lambda m: sort_key(0, None, m))


def _matrices(report: Any, rows: Any, sum_sq_delta: Any, sum_sq_base: Any) -> tuple[list[int], dict[str, Any]]:
    """(layers, {tuned label: layers x units relative L2, NaN where no row}) of unit rows given by
    index (`rows`) with their sums; rows sharing (tuned, layer, index) are pooled (sums added)."""
    import numpy as np

    from weightsurgeon.report.units import derived

    units = report.units
    tuned, layer, index = units.tuned[rows], units.layer[rows], units.index[rows]
    layers = np.unique(layer)
    count = int(index.max()) + 1
    cell = (tuned.astype(np.int64) * len(layers) + np.searchsorted(layers, layer)) * count + index
    cells, inverse = np.unique(cell, return_inverse=True)
    rel = derived(np.bincount(inverse, weights=sum_sq_delta, minlength=len(cells)),
                  np.bincount(inverse, weights=sum_sq_base, minlength=len(cells)))[2]
    mats = {}
    for label in report.labels:
        code = units.code(units.tuned_names, label)
        mine = (cells // (len(layers) * count)) == code
        if code < 0 or not mine.any():
            continue
        mat = np.full(len(layers) * count, np.nan)
        mat[cells[mine] % (len(layers) * count)] = rel[mine]
        mats[label] = mat.reshape(len(layers), count)
    return layers.tolist(), mats


def head_matrices(report: Any, module: str) -> tuple[list[int], dict[str, Any]] | None:
    """(layers, {tuned label: layers x heads relative L2}) of one module kind; None without head rows."""
    import numpy as np

    units = report.units
    rows = np.flatnonzero(units.where(module=module, kind="head", per_layer=True))
    if not rows.size:
        return None
    return _matrices(report, rows, units.sum_sq_delta[rows], units.sum_sq_base[rows])


def expert_matrices(report: Any) -> tuple[list[int], dict[str, Any], list[str]] | None:
    """(layers, {tuned label: layers x experts relative L2, matrices pooled}, the module kinds pooled);
    None without expert rows."""
    import numpy as np

    from weightsurgeon.report.model import sort_key

    units = report.units
    rows = np.flatnonzero(units.where(kind="expert", per_layer=True))
    if not rows.size:
        return None
    layers, mats = _matrices(report, rows, units.sum_sq_delta[rows], units.sum_sq_base[rows])
    pooled = sorted((units.module_names[c] for c in np.unique(units.module[rows])), key=lambda m: sort_key(0, None, m))
    return layers, mats, pooled


def heatmap_figure(layers: list[int], mats: dict[str, Any], kind: str, title: str):
    """Layers x units panels, one per tuned model, on one colour scale."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize

    from weightsurgeon.report.figures import _grid, _new_figure, _short, heat_image

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
    mesh = None
    for ax, label in zip(axes, labels):
        mesh = heat_image(ax, mats[label], cmap, norm)
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
    cbar = fig.colorbar(mesh, ax=list(axes[:len(labels)]), shrink=0.9, pad=0.02)
    cbar.set_label("relative L2  ‖B − A‖ / ‖A‖" + ("  (log scale)" if log else ""))
    note = "; grey: unchanged" if any(np.isnan(m).any() for m in mats.values()) else ""
    fig.suptitle(f"{title}{note}", fontsize=12)
    return fig


def figure_head_heatmap(report: Any, module: str):
    """Layers x heads of one module kind; None when it has no per-layer head rows."""
    found = head_matrices(report, module)
    if found is None:
        return None
    layers, mats = found
    return heatmap_figure(layers, mats, "head", f"{module}: relative change per layer and head")


def figure_expert_heatmap(report: Any):
    """Layers x experts, each expert's matrices pooled; None when the report has no per-layer expert rows."""
    found = expert_matrices(report)
    if found is None:
        return None
    layers, mats, pooled = found
    what = ", ".join(m.removeprefix("expert_") for m in pooled)
    return heatmap_figure(layers, mats, "expert", f"Relative change per layer and expert ({what} pooled)")


def unit_figure_makers(report: Any) -> list[tuple[str, Any]]:
    """(file stem, a function drawing the Figure): ``heads_<module>`` per module kind with heads, then
    ``experts`` where the report has expert rows."""
    out: list[tuple[str, Any]] = [(f"heads_{m}", lambda m=m: figure_head_heatmap(report, m)) for m in head_modules(report)]
    if report.units.where(kind="expert", per_layer=True).any():
        out.append((EXPERTS, lambda: figure_expert_heatmap(report)))
    return out
