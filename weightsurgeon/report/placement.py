"""Where the panels of a figure go: margins from the texts drawn around them, measured once.

matplotlib's constrained layout places panels the same way, but it measures every axis of
every panel twice (two rounds), each time locating, formatting and measuring its ticks twice
more (once for the tick labels, once to place the axis label), and the draw that follows
does all of that again: at 9 figures a report, that was a quarter of the figures' cost.
Here each axis makes its tick labels once; their boxes, the axis labels', the titles', the
colour bar's, the legend's and the suptitle's give the margins, and every panel is set in
place with ``Axes.set_position``.

What it handles is what the report's figures hold: a grid of equal panels (``Figure.subplots``,
hidden panels allowed), at most one colour bar to the right of the grid (``Figure.colorbar``
with ``ax=`` the panels, ``shrink`` 0.9), figure legends at the right edge, a suptitle.
"""
from __future__ import annotations

from typing import Any

PAD = 0.06  # inches between the figure's edge and any text
GAP = 0.14  # inches between neighbouring panels' texts (or frames)
COLORBAR_GAP = 0.12  # inches from the grid to the colour bar
COLORBAR_SHRINK = 0.9  # the colour bar's height as a share of the grid's (as drawn by `Figure.colorbar(shrink=0.9)`)
COLORBAR_ASPECT = 20  # height / width, matplotlib's default


def _is_colorbar(ax: Any) -> bool:
    return ax.get_label() == "<colorbar>"


def _cell(ax: Any) -> Any:
    """The panel's cell in the figure's grid (a colour bar made for one panel nests the panel
    in a grid of its own)."""
    return ax.get_subplotspec().get_topmost_subplotspec()


def drawn_tick_labels(axis: Any) -> list[Any]:
    """The tick labels a draw will show: visible, not empty, at a tick inside the view (locators
    also return ticks beyond it, which the draw leaves out). Each axis locates and formats its
    ticks here once; the draw does it again in the same places."""
    axis.get_majorticklabels()  # locates, formats and positions the major ticks
    axis.get_minorticklabels()
    lo, hi = sorted(axis.get_view_interval())
    scale = axis.get_transform()
    lo_t, hi_t = sorted(scale.transform([lo, hi]))
    slack = 1e-9 * max(abs(hi_t - lo_t), 1e-300)
    out = []
    for tick in axis.get_major_ticks() + axis.get_minor_ticks():
        loc = scale.transform([tick.get_loc()])[0]
        if not (lo_t - slack <= loc <= hi_t + slack):
            continue
        out += [label for label in (tick.label1, tick.label2) if label.get_visible() and label.get_text()]
    return out


def overhang(ax: Any, renderer: Any) -> tuple[float, float, float, float]:
    """How far (left, right, bottom, top, in pixels) the panel's texts reach beyond its frame.

    Tick labels are measured where the axis puts them (pads and rotation included); the axis
    labels, placed only at draw time, are added beyond the tick labels on their side, with
    their label pad, as the draw will place them."""
    frame = ax.get_window_extent(renderer)
    reach = [0.0, 0.0, 0.0, 0.0]

    def extend(box: Any) -> None:
        reach[0] = max(reach[0], frame.x0 - box.x0)
        reach[1] = max(reach[1], box.x1 - frame.x1)
        reach[2] = max(reach[2], frame.y0 - box.y0)
        reach[3] = max(reach[3], box.y1 - frame.y1)

    px_per_pt = ax.get_figure(root=True).dpi / 72.0
    for axis, sides in ((ax.xaxis, {"bottom": 2, "top": 3}), (ax.yaxis, {"left": 0, "right": 1})):
        if not axis.get_visible():
            continue
        ticks_reach = [0.0, 0.0, 0.0, 0.0]
        for label in drawn_tick_labels(axis):
            box = label.get_window_extent(renderer)
            ticks_reach[0] = max(ticks_reach[0], frame.x0 - box.x0)
            ticks_reach[1] = max(ticks_reach[1], box.x1 - frame.x1)
            ticks_reach[2] = max(ticks_reach[2], frame.y0 - box.y0)
            ticks_reach[3] = max(ticks_reach[3], box.y1 - frame.y1)
        reach = [max(a, b) for a, b in zip(reach, ticks_reach)]
        side = sides[axis.get_label_position()]
        if axis.label.get_visible() and axis.label.get_text():
            box = axis.label.get_window_extent(renderer)
            size = box.height if side >= 2 else box.width
            reach[side] = max(reach[side], ticks_reach[side] + axis.labelpad * px_per_pt + size)
        offset = axis.offsetText
        if offset.get_visible() and offset.get_text():  # "1e-5" above a y axis, beside an x axis
            box = offset.get_window_extent(renderer)
            reach[3 if side < 2 else 1] += box.height if side < 2 else box.width
    for text in [ax.title, *ax.texts]:
        if text.get_visible() and text.get_text():
            extend(text.get_window_extent(renderer))
    legend = ax.get_legend()
    if legend is not None and legend.get_visible():  # one placed beside the panel (bbox_to_anchor) included
        extend(legend.get_window_extent(renderer))
    return tuple(reach)


def lay_out_grid(fig: Any) -> None:
    """Place the figure's panels, colour bar, legends and suptitle so that no text leaves the
    figure or runs into a neighbour, the panels as large as that allows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)  # the canvas the PNG is drawn on: text sizes measured here are reused there
    renderer = fig.canvas.get_renderer()
    dpi = fig.dpi
    width, height = fig.get_figwidth() * dpi, fig.get_figheight() * dpi
    pad, gap = PAD * dpi, GAP * dpi
    panels = [ax for ax in fig.axes if not _is_colorbar(ax) and ax.get_subplotspec() is not None]
    bars = [ax for ax in fig.axes if _is_colorbar(ax)]
    if not panels:
        return
    nrows, ncols = _cell(panels[0]).get_gridspec().get_geometry()
    left = [0.0] * ncols
    right = [0.0] * ncols
    bottom = [0.0] * nrows
    top = [0.0] * nrows
    for ax in panels:
        if not ax.get_visible():
            continue
        spec = _cell(ax)
        row, col = spec.rowspan.start, spec.colspan.start
        l, r, b, t = overhang(ax, renderer)
        left[col], right[col] = max(left[col], l), max(right[col], r)
        bottom[row], top[row] = max(bottom[row], b), max(top[row], t)

    # Right of the grid: a colour bar (its own texts measured beside it) and the figure's legends.
    side = 0.0
    for bar in bars:
        side = max(side, COLORBAR_GAP * dpi + overhang(bar, renderer)[1])
    for legend in fig.legends:
        legend.borderaxespad = 0.0  # the figure's edge keeps PAD instead
    legend_width = max((legend.get_window_extent(renderer).width for legend in fig.legends), default=0.0)
    suptitle = fig._suptitle
    head = suptitle.get_window_extent(renderer).height + pad if suptitle is not None and suptitle.get_text() else 0.0

    outer_right = pad + legend_width + (pad if legend_width else 0.0)
    fixed_w = pad + sum(left) + sum(right) + gap * (ncols - 1) + outer_right
    fixed_h = pad + head + sum(top) + sum(bottom) + gap * (nrows - 1) + pad
    # The colour bar's width follows the grid's height (aspect 20), which is known first.
    panel_h = max((height - fixed_h) / nrows, 0.1 * height / nrows)
    grid_h = panel_h * nrows + sum(top[1:]) + sum(bottom[:-1]) + gap * (nrows - 1)
    bar_w = COLORBAR_SHRINK * grid_h / COLORBAR_ASPECT if bars else 0.0
    panel_w = max((width - fixed_w - (bar_w + side if bars else 0.0)) / ncols, 0.1 * width / ncols)

    xs, x = [], pad
    for col in range(ncols):
        x += left[col]
        xs.append(x)
        x += panel_w + right[col] + gap
    ys, y = [], height - pad - head
    for row in range(nrows):
        y -= top[row] + panel_h
        ys.append(y)
        y -= bottom[row] + gap
    for ax in panels:
        spec = _cell(ax)
        ax.set_position([xs[spec.colspan.start] / width, ys[spec.rowspan.start] / height,
                         panel_w / width, panel_h / height])
    # A panel of fixed aspect (imshow) is drawn smaller than its slot, centred in it: the colour
    # bar goes beside the frames as drawn.
    grid_right, grid_top, grid_bottom = 0.0, 0.0, height
    for ax in panels:
        if ax.get_aspect() != "auto":
            ax.apply_aspect()
        frame = ax.get_position(original=False)
        grid_right = max(grid_right, frame.x1 * width + right[_cell(ax).colspan.start])
        grid_top, grid_bottom = max(grid_top, frame.y1 * height), min(grid_bottom, frame.y0 * height)
    for bar in bars:
        bar_h = COLORBAR_SHRINK * (grid_top - grid_bottom)
        bar_y = grid_bottom + (grid_top - grid_bottom - bar_h) / 2
        bar.set_position([(grid_right + COLORBAR_GAP * dpi) / width, bar_y / height, bar_w / width, bar_h / height])
    for legend in fig.legends:
        legend.set_bbox_to_anchor((0.0, 0.0, 1.0 - pad / width, 1.0))
    if head:
        suptitle.set_y(1.0 - pad / height)
        suptitle.set_verticalalignment("top")
