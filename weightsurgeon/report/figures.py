"""The Delta stethoscope's pictures, drawn from a DiffReport.

Figures are a second reading of the machine-readable report: everything here reads the
same `DiffReport` the terminal table and the CSV read (a report.json dict is loaded into
one first), so `surgeon plot report.json` redraws exactly what `surgeon diff` drew. matplotlib is imported inside the functions that draw
(Agg, no pyplot: no global figure state, nothing to close), so importing this module
stays cheap for the CLI.

The four figures:

- ``l2_by_layer``: L2 norm of the delta per layer, one line per module (paper Fig. 2),
  one panel per tuned model;
- ``rel_change_hist``: distributions of the elementwise relative change every N layers,
  one panel per linear module and tuned model (paper Fig. 3);
- ``rel_l2_heatmap``: layers x modules heatmap of the relative L2, tuned models side by
  side on one colour scale;
- ``delta_share``: each module kind's share of the total squared delta, in percent and
  absolute, tuned models as grouped bars.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from weightsurgeon.errors import SurgeonError
from weightsurgeon.layout import GROUPS
from weightsurgeon.report.model import DiffReport, finite

FORMATS = ("png", "svg")
FIGURE_NAMES = ("l2_by_layer", "rel_change_hist", "rel_l2_heatmap", "delta_share")
# Modules the relative-change histograms show, when present (the paper's Fig. 3 panels).
HIST_MODULES = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj",
                "down_proj", "expert_gate_proj", "expert_up_proj", "expert_gate_up_proj", "expert_down_proj")
# Positive values spanning more than this ratio get a log scale.
LOG_SPAN = 30.0
DPI = 120


def as_report(report: Any) -> DiffReport:
    """A DiffReport as is; a report.json dict (or an object with ``to_dict()``) loaded and checked."""
    if isinstance(report, DiffReport):
        return report
    if not isinstance(report, dict) and callable(getattr(report, "to_dict", None)):
        report = report.to_dict()
    return DiffReport.from_dict(report)


def _base_label(report: DiffReport) -> str:
    return str(report.base.source or report.base.path or "base")


# ---------------------------------------------------------------- styling helpers

def _module_colors(modules: Sequence[str]) -> dict[str, Any]:
    """One fixed colour per module kind, the same in every figure of a report."""
    from matplotlib import colormaps

    palette = list(colormaps["tab10"].colors) + list(colormaps["Dark2"].colors) + list(colormaps["tab20b"].colors)
    return {m: palette[i % len(palette)] for i, m in enumerate(modules)}


def _tuned_colors(labels: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["Set2"].colors if len(labels) <= 8 else colormaps["tab20"].colors
    return {t: palette[i % len(palette)] for i, t in enumerate(labels)}


def _linestyle(module: str) -> str:
    if module in GROUPS["attn"]:
        return "-"
    if module in GROUPS["norm"]:
        return ":"
    return "--"


def _spans_decades(values: Iterable[float | None]) -> bool:
    pos = [v for v in values if v is not None and v > 0]
    return len(pos) >= 2 and max(pos) / min(pos) > LOG_SPAN


def _short(label: str, width: int = 48) -> str:
    return label if len(label) <= width else "…" + label[-(width - 1):]


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _new_figure(width: float, height: float):
    """A figure without a layout engine: `lay_out` places its panels once (report/placement.py).

    A figure that has (or ever had) a layout engine is drawn twice by every savefig (a
    layout draw, then the real one), even after the engine is switched off."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="none")


def lay_out(fig) -> None:
    """Plain-text log labels (`plain_log_labels`), then every panel, colour bar, legend and the
    suptitle placed by the sizes of their texts (`placement.lay_out_grid`)."""
    from weightsurgeon.report.placement import lay_out_grid

    plain_log_labels(fig)
    lay_out_grid(fig)


_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")
_MATHTEXT_POWER = re.compile(r"\\mathdefault\{(?:(?P<coeff>[^\\{}]*)\\times)?(?P<base>[^\\{}^]*)(?:\^\{(?P<exp>[^{}]*)\})?\}")


def plain_text_power(label: str) -> str:
    """matplotlib's log tick label ``$\\mathdefault{2\\times10^{-3}}$`` as plain text: ``2×10⁻³``."""
    if not (label.startswith("$") and label.endswith("$")):
        return label
    found = _MATHTEXT_POWER.fullmatch(label[1:-1])
    if found is None:
        return label
    coeff, base, exp = found.group("coeff"), found.group("base"), found.group("exp")
    return (f"{coeff}×" if coeff else "") + base + (exp.translate(_SUPERSCRIPT) if exp else "")


def plain_log_labels(fig) -> None:
    """Log axes (and log colour bars) label their ticks in plain text, ``10⁻³`` for ``10^{-3}``.

    matplotlib writes log tick labels as mathtext, and every renderer (the layout's, the
    PNG's, the SVG's) parses each label again with pyparsing: ~0.05 s a label, the largest
    single cost of drawing these figures. Unicode superscripts draw the same numbers as text."""
    from matplotlib.ticker import LogFormatterSciNotation

    class PlainLogFormatter(LogFormatterSciNotation):
        def __call__(self, x, pos=None):
            return plain_text_power(super().__call__(x, pos))

    def plain(f):
        if type(f) is not LogFormatterSciNotation:
            return None
        return PlainLogFormatter(base=f._base, labelOnlyBase=f.labelOnlyBase,
                                 minor_thresholds=f.minor_thresholds, linthresh=f._linthresh)

    for ax in fig.axes:
        colorbar = getattr(ax, "_colorbar", None)
        for axis in (ax.xaxis, ax.yaxis):
            major, minor = plain(axis.get_major_formatter()), plain(axis.get_minor_formatter())
            if colorbar is not None and axis is colorbar.long_axis:
                if major is not None:
                    colorbar.formatter = major
                if minor is not None:
                    colorbar.minorformatter = minor
                continue
            if major is not None:
                axis.set_major_formatter(major)
            if minor is not None:
                axis.set_minor_formatter(minor)


# ---------------------------------------------------------------- the figures

def figure_l2_by_layer(report: DiffReport):
    """Paper Fig. 2: ||B - A|| per layer, one line per module kind, one panel per tuned model."""
    modules = report.module_names(per_layer=True)
    layers = report.layers()
    if not modules or not layers:
        return None
    colors = _module_colors(report.module_names())
    values = [finite(m.stats.l2_delta) for m in report.modules if m.layer is not None]
    log = _spans_decades(values)
    tuned_labels = report.labels
    nrows, ncols = _grid(len(tuned_labels), 3)
    fig = _new_figure(min(5.2 * ncols, 17) + 2.2, 3.6 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    def unchanged_in(tuned: str, module: str) -> bool:
        return all(r.stats.l2_delta == 0 for r in report.rows_of(tuned, module) if r.layer is not None)

    # One legend entry per module (same colour and style in every panel); "(unchanged)" only
    # where no tuned model changed it. A panel names its own unchanged modules instead: on
    # a log scale their lines are not drawn at all.
    everywhere = {m for m in modules if all(unchanged_in(t, m) for t in tuned_labels)}
    handles: dict[str, Any] = {}
    for ax, tuned in zip(axes, tuned_labels):
        here: list[str] = []
        for module in modules:
            rows = [r for r in report.rows_of(tuned, module) if r.layer is not None]
            xs = [r.layer for r in rows]
            l2 = [finite(r.stats.l2_delta) for r in rows]
            ys = [math.nan if v is None or (log and v <= 0) else v for v in l2]
            if not xs:
                continue
            if unchanged_in(tuned, module) and module not in everywhere:
                here.append(module)
            label = f"{module} (unchanged)" if module in everywhere else module
            (line,) = ax.plot(xs, ys, _linestyle(module), color=colors[module], marker="o",
                              markersize=2.5 if len(layers) > 20 else 3.5, linewidth=1.5, label=label)
            handles.setdefault(label, line)
        note = _wrap("unchanged: " + ", ".join(here), 70) if here else ""
        if note:  # under the panel's title, above the plot: nothing of the data is hidden
            ax.text(0.5, 1.015, note, transform=ax.transAxes, fontsize=7.5, va="bottom", ha="center", color="0.35")
        ax.set_title(_short(tuned), fontsize=11, pad=6 + 10 * (note.count("\n") + 1) if note else 6)
        ax.set_xlabel("layer")
        ax.grid(True, which="major", alpha=0.3)
        if log:
            ax.set_yscale("log")
        _integer_xaxis(ax, layers)
    for ax in axes[len(tuned_labels):]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel("L2 norm of delta  ‖B − A‖")
    # Centred on the right: at the top its title would run into the suptitle.
    fig.legend(list(handles.values()), list(handles.keys()), loc="center right", fontsize=9,
               title="module", title_fontsize=9, frameon=False)
    fig.suptitle(f"Weight change per layer and module (base: {_short(_base_label(report), 60)})", fontsize=12)
    return fig


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def _integer_xaxis(ax, layers: Sequence[int]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
    if layers:
        pad = max(0.5, 0.02 * (layers[-1] - layers[0]))
        ax.set_xlim(layers[0] - pad, layers[-1] + pad)


def hist_layers(layers: Sequence[int], every: int) -> list[int]:
    """Layers the histogram figure shows: multiples of ``every`` (the paper's every-5), else every Nth present."""
    every = max(1, int(every))
    chosen = [l for l in layers if l % every == 0]
    return chosen if chosen else list(layers[::every])


def figure_rel_change_hist(report: DiffReport, every: int):
    """Paper Fig. 3: relative-change distributions every N layers; rows are tuned models, columns modules."""
    with_hist = {m.module for m in report.modules if m.layer is not None and m.stats.hist.sum() > 0}
    modules = [m for m in report.module_names(per_layer=True) if m in with_hist and m in HIST_MODULES]
    if not modules:
        modules = [m for m in report.module_names(per_layer=True) if m in with_hist]
    layers = hist_layers(report.layers(), every)
    if not modules or not layers:
        return None
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, Normalize
    from matplotlib.ticker import MaxNLocator

    edges = np.asarray(report.bin_edges, dtype=float)
    cmap = colormaps["viridis"]
    if len(layers) == 1:
        norm = Normalize(layers[0] - 1, layers[0] + 1)
    else:
        norm = Normalize(layers[0], layers[-1])
    nrows, ncols = len(report.labels), len(modules)
    fig = _new_figure(min(2.9 * ncols, 22) + 1.2, 2.5 * nrows + 0.9)
    axes = fig.subplots(nrows, ncols, sharex="col", sharey=True, squeeze=False)
    centre = 0.5 * (edges[0] + edges[-1])
    for j, module in enumerate(modules):
        reach = 0.0  # each column zooms to the bins that hold anything (edge bins hold the clipped tails)
        for i, tuned in enumerate(report.labels):
            ax = axes[i, j]
            for layer in layers:
                row = report.module_row(tuned, layer, module)
                if row is None:
                    continue
                counts = np.asarray(row.stats.hist, dtype=float)
                total = counts.sum()
                if total <= 0:
                    continue
                frac = counts / total
                nz = np.nonzero(counts)[0]
                reach = max(reach, abs(edges[nz[0]] - centre), abs(edges[nz[-1] + 1] - centre))
                _stairs(ax, np.where(frac > 0, frac, np.nan), edges, cmap(norm(layer)), 1.1)
            ax.autoscale_view()
            ax.set_yscale("log")
            _sparse_log_ticks(ax.yaxis)
            ax.grid(True, alpha=0.25)
            ax.tick_params(labelsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4, symmetric=True))
            if i == 0:
                ax.set_title(module, fontsize=10)
            if i == nrows - 1:
                ax.set_xlabel("(B − A) / A", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{_short(tuned, 28)}\nfraction of elements", fontsize=9)
        if reach > 0:
            half = min(0.5 * (edges[-1] - edges[0]), reach * 1.04)
            axes[0, j].set_xlim(centre - half, centre + half)
    if len(layers) <= 12:
        # One colour band per drawn layer, equal widths, labelled with the layer number.
        listed = _discrete(cmap, norm, layers)
        index_norm = BoundaryNorm([k - 0.5 for k in range(len(layers) + 1)], len(layers))
        cbar = fig.colorbar(ScalarMappable(norm=index_norm, cmap=listed), ax=axes, shrink=0.9, pad=0.01,
                            ticks=range(len(layers)))
        cbar.ax.set_yticklabels([str(l) for l in layers])
        cbar.ax.minorticks_off()
    else:
        cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.9, pad=0.01)
    cbar.set_label("layer")
    clip = 0.5 * (edges[-1] - edges[0])
    fig.suptitle(f"Relative change of weights, every {every} layers (|values| > {clip:g} counted in the edge bins)",
                 fontsize=12)
    return fig


def _stairs(ax, values, edges, color, linewidth: float) -> None:
    """``ax.stairs(values, edges)`` unfilled, without its per-vertex limit update.

    Axes.add_patch walks the path segment by segment in Python to update the data limits
    (a 200-bin histogram is ~800 segments); the step path's vertices are its extent, so
    they go to update_datalim in one call. Same patch, same limits (once the caller runs
    autoscale_view), same picture."""
    from matplotlib.patches import StepPatch

    patch = StepPatch(values, edges, baseline=0, fill=False, edgecolor=color, linewidth=linewidth)
    ax.add_artist(patch)
    ax.update_datalim(patch.get_path().vertices)
    ax.update_datalim([(edges[0], 0.0)])
    patch.sticky_edges.y.append(0.0)


def _sparse_log_ticks(axis) -> None:
    """A few decades, no minor ticks: minor log ticks on many panels dominate the drawing time."""
    from matplotlib.ticker import LogLocator, NullLocator

    axis.set_major_locator(LogLocator(base=10, numticks=6))
    axis.set_minor_locator(NullLocator())


def _discrete(cmap, norm, layers: Sequence[int]):
    from matplotlib.colors import ListedColormap

    return ListedColormap([cmap(norm(l)) for l in layers])


def heat_image(ax, mat: Any, cmap: Any, norm: Any) -> Any:
    """A heatmap of a rows x columns matrix, cell (i, j) centred on (j, i), row 0 at the top, NaN in the
    colormap's 'bad' colour; returns the mappable for a colour bar.

    A mesh of cells, not imshow: for a PNG, imshow resamples the matrix to the panel's pixels
    in float64/float32 before colouring, 40-90 MB at once for a full-page panel (64 layers x
    512 experts), where the mesh's cells are drawn straight into the canvas. In an SVG the
    mesh is rasterized (one embedded image, as imshow gives), not a path per cell."""
    import numpy as np

    rows, cols = mat.shape
    mesh = ax.pcolormesh(np.arange(cols + 1) - 0.5, np.arange(rows + 1) - 0.5, mat, cmap=cmap, norm=norm,
                         shading="flat", rasterized=True)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    return mesh


def figure_rel_l2_heatmap(report: DiffReport):
    """Layers x modules of ||B - A|| / ||A||, tuned models side by side on one colour scale."""
    modules = report.module_names(per_layer=True)
    layers = report.layers()
    if not modules or not layers:
        return None
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm, Normalize

    mats = []
    for tuned in report.labels:
        mat = np.full((len(layers), len(modules)), np.nan)
        for i, layer in enumerate(layers):
            for j, module in enumerate(modules):
                row = report.module_row(tuned, layer, module)
                if row is not None and math.isfinite(row.stats.rel_l2):
                    mat[i, j] = row.stats.rel_l2
        mats.append(mat)
    finite = np.concatenate([m[np.isfinite(m)] for m in mats]) if mats else np.array([])
    positive = finite[finite > 0]
    log = positive.size >= 2 and positive.max() / positive.min() > LOG_SPAN
    if log:
        norm = LogNorm(vmin=positive.min(), vmax=positive.max())
        mats = [np.where(m > 0, m, np.nan) for m in mats]  # zeros (unchanged) show as the 'bad' colour
    else:
        vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        norm = Normalize(vmin=0.0, vmax=vmax)
    cmap = colormaps["magma_r"].with_extremes(bad="#dddddd")
    nrows, ncols = _grid(len(report.labels), 4)
    height = min(max(3.0, 0.22 * len(layers) + 1.6), 14)
    width_each = max(2.8, 0.45 * len(modules) + 1.0)
    fig = _new_figure(min(width_each * ncols, 22) + 1.4, height * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    for ax, tuned, mat in zip(axes, report.labels, mats):
        heat_image(ax, mat, cmap, norm)
        ax.set_xticks(range(len(modules)), modules, rotation=55, ha="right", fontsize=8)
        step = max(1, math.ceil(len(layers) / 24))
        ticks = list(range(0, len(layers), step))
        ax.set_yticks(ticks, [str(layers[t]) for t in ticks], fontsize=8)
        ax.set_title(_short(tuned, 36), fontsize=10)
        ax.tick_params(length=2)
    for ax in axes[len(report.labels):]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel("layer")
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[:len(report.labels)]), shrink=0.9, pad=0.02)
    cbar.set_label("relative L2  ‖B − A‖ / ‖A‖" + ("  (log scale)" if log else ""))
    note = "; grey: unchanged or not measured" if np.isnan(np.concatenate([m.ravel() for m in mats])).any() else ""
    fig.suptitle(f"Relative change per layer and module{note}", fontsize=12)
    return fig


def share_data(report: DiffReport) -> tuple[list[str], dict[str, list[float]], dict[str, list[float]]]:
    """The share figure's numbers, straight from `DiffReport.module_kinds`: (modules, percent, absolute) per tuned model."""
    modules = report.module_names()
    pct: dict[str, list[float]] = {}
    absolute: dict[str, list[float]] = {}
    for tuned in report.labels:
        kinds = {k["module"]: k for k in report.module_kinds(tuned)}
        pct[tuned] = [100.0 * kinds[m]["share"] if m in kinds else 0.0 for m in modules]
        absolute[tuned] = [finite(kinds[m]["sum_sq_delta"]) or 0.0 if m in kinds else 0.0 for m in modules]
    return modules, pct, absolute


def figure_delta_share(report: DiffReport):
    """Each module kind's share of the total squared delta (percent, and absolute), tuned models grouped."""
    modules, shares, sums = share_data(report)
    if not modules or not any(v > 0 for s in sums.values() for v in s):
        return None
    import numpy as np

    colors = _tuned_colors(report.labels)
    n = len(report.labels)
    x = np.arange(len(modules))
    width = 0.8 / n
    fig = _new_figure(min(max(6.5, 0.55 * len(modules) * max(1, n / 2) + 2.5), 22), 7.2)
    ax_pct, ax_abs = fig.subplots(2, 1, sharex=True)
    absolute_all = []
    for k, tuned in enumerate(report.labels):
        absolute = np.array(sums[tuned])
        pct = np.array(shares[tuned])
        absolute_all.extend(absolute.tolist())
        offs = x - 0.4 + width * (k + 0.5)
        bars = ax_pct.bar(offs, pct, width, color=colors[tuned], label=_short(tuned, 40), edgecolor="white", linewidth=0.4)
        if n <= 2 and len(modules) <= 18:
            ax_pct.bar_label(bars, labels=[f"{p:.1f}" if p >= 0.05 else "" for p in pct], fontsize=7, padding=1)
        ax_abs.bar(offs, np.where(absolute > 0, absolute, np.nan), width, color=colors[tuned],
                   edgecolor="white", linewidth=0.4)
    ax_pct.set_ylabel("share of total ‖B − A‖²  (%)")
    ax_pct.grid(True, axis="y", alpha=0.3)
    ax_pct.margins(y=0.12)
    ax_abs.set_ylabel("Σ ‖B − A‖²  (absolute)")
    ax_abs.grid(True, axis="y", alpha=0.3)
    if _spans_decades(absolute_all):
        ax_abs.set_yscale("log")
    ax_abs.set_xticks(x, modules, rotation=45, ha="right", fontsize=9)
    if n > 1:
        ax_pct.legend(title="tuned model", fontsize=8, title_fontsize=8, frameon=False)
    fig.suptitle("Share of the squared weight change by module kind, all layers summed", fontsize=12)
    return fig


def caption(name: str, every: int = 5) -> str:
    """The sentence under a figure in report.html."""
    return {
        "l2_by_layer": "L2 norm of the weight delta across layers, one line per module (cf. the paper's Fig. 2). "
                       "Modules that did not change at all are listed in the legend as unchanged.",
        "rel_change_hist": f"Distribution of the elementwise relative change (B − A) / A every {every} layers, "
                           "one panel per linear module (cf. Fig. 3); elements with A = 0 are left out, values beyond "
                           "the clip range are counted in the edge bins.",
        "rel_l2_heatmap": "Relative L2 change ‖B − A‖ / ‖A‖ per layer and module, one colour scale for all tuned models.",
        "delta_share": "Each module kind's share of the total squared delta Σ‖B − A‖², in percent and absolute, "
                       "all layers summed.",
        "experts": "Relative L2 change ‖B − A‖ / ‖A‖ of every routed expert per layer, its matrices pooled "
                   "(√ of Σ‖B − A‖² / Σ‖A‖² over them); each matrix's own row is in report_heads.csv.",
    }.get(name) or (f"Relative L2 change ‖B − A‖ / ‖A‖ of every attention head of {name[6:]} per layer."
                    if name.startswith("heads_") else name)


def iter_figures(report: Any, every: int | None = None) -> Iterator[tuple[str, Any]]:
    """(name, matplotlib Figure, laid out) for every figure the report has data for, in FIGURE_NAMES
    order, then the layers x heads heatmaps and the layers x experts one: one at a time, so a caller that saves each and
    lets it go holds one figure, never all of them (eleven figures of a MoE report held ~60 MB)."""
    report = as_report(report)
    every = every or report.every or 5
    from weightsurgeon.report.unit_figures import unit_figure_makers

    makers: list[tuple[str, Any]] = [
        ("l2_by_layer", lambda: figure_l2_by_layer(report)),
        ("rel_change_hist", lambda: figure_rel_change_hist(report, every)),
        ("rel_l2_heatmap", lambda: figure_rel_l2_heatmap(report)),
        ("delta_share", lambda: figure_delta_share(report)),
    ] + unit_figure_makers(report)  # heads_<module> per module kind with heads, then experts
    left_out = sum(m.stats.n_nonfinite for m in report.modules)
    for name, make in makers:
        fig = make()
        if fig is None:
            continue
        if left_out and fig._suptitle is not None:  # a NaN-ridden fine-tune must not look merely unchanged here either
            fig._suptitle.set_text(f"{fig._suptitle.get_text()}\n{left_out} NaN/Inf value(s) left out of every "
                                   "statistic (report.json 'nonfinite' names the tensors)")
        lay_out(fig)
        yield name, fig
        del fig  # before the next one is made


def build_figures(report: Any, every: int | None = None) -> list[tuple[str, Any]]:
    """Every figure of `iter_figures` at once (all held together: for a caller that wants the list)."""
    return list(iter_figures(report, every))


def _configure_matplotlib() -> None:
    """Headless, reproducible output: Agg, and SVGs without a date or random ids."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    matplotlib.rcParams["svg.hashsalt"] = "weightsurgeon"
    matplotlib.rcParams["svg.fonttype"] = "path"
    # Titles at a fixed height above their panel. Left to matplotlib, every draw measures
    # the y axis once more per titled panel (its ticks, labels and offset text) to keep the
    # title clear of top-side decorations, which these figures do not have.
    matplotlib.rcParams["axes.titley"] = 1.0


def save_figure(fig: Any, path: Path, fmt: str) -> Path:
    """Write one figure atomically (temp file + rename): a reader never sees half a PNG."""
    from weightsurgeon.atomic import replace_file

    return replace_file(path, lambda fh: fig.savefig(fh, format=fmt, dpi=DPI, metadata=_metadata(fmt)))


def _metadata(fmt: str) -> dict:
    # Dates in the files make identical reports produce different bytes.
    return {"Date": None} if fmt == "svg" else {"Software": "weightsurgeon"}


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """'png,svg' or an iterable -> a checked tuple of image formats."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out: list[str] = []
    for item in items:
        fmt = item.strip().lower().lstrip(".")
        if not fmt:
            continue
        if fmt not in FORMATS:
            raise SurgeonError(f"unknown figure format {item.strip()!r}; choose from {', '.join(FORMATS)}")
        if fmt not in out:
            out.append(fmt)
    if not out:
        raise SurgeonError(f"no figure format given; choose from {', '.join(FORMATS)}")
    return tuple(out)


def draw_all(report: Any, out_dir: Path, every: int | None = None, formats: str | Iterable[str] = FORMATS) -> list[Path]:
    """Draw every figure the report has data for into out_dir (created if needed); return the files written.

    ``every`` picks the histogram layers (default: the report's ``options.every``, else 5).
    Files are named ``<figure>.<format>`` (see FIGURE_NAMES); figures without data (no
    per-layer modules, no histograms) are skipped rather than drawn empty.
    """
    fmts = parse_formats(formats)
    report = as_report(report)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _configure_matplotlib()
    written: list[Path] = []
    for name, fig in iter_figures(report, every):
        for fmt in fmts:
            written.append(save_figure(fig, out_dir / f"{name}.{fmt}", fmt))
        del fig  # before the next one is drawn
    return written


def render_png(report: Any, every: int | None = None) -> list[tuple[str, bytes]]:
    """Every figure as PNG bytes, nothing written to disk (for a page built without figure files)."""
    import io

    _configure_matplotlib()
    out = []
    for name, fig in iter_figures(report, every):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, metadata=_metadata("png"))
        out.append((name, buf.getvalue()))
    return out
