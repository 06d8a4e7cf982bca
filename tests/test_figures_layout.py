"""Where the figures' texts land: panels placed by report/placement.py, not by matplotlib's
constrained layout, must still keep every text inside the picture and clear of its neighbours,
and log axes must label their ticks in plain text (no mathtext to parse at every draw).

The reports are built by hand (test_figures.make_report): five tuned models (a grid with a
hidden panel, a long label), log scales, a legend, colour bars; plus head and expert units for
the layers x units heatmaps.
"""
from __future__ import annotations

import io
import itertools

import pytest

from test_figures import make_report
from weightsurgeon.report.figures import _configure_matplotlib, as_report, iter_figures, plain_text_power

TUNED = ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B-with-a-long-label", "math", "s1", "ft-x", "ft-y")


@pytest.fixture(scope="module")
def figures() -> list[tuple[str, object]]:
    """Every figure of a five-model report with heads and experts, and compare-reports' two, drawn once as PNG."""
    from weightsurgeon.report.units import UnitDiff, UnitTable

    report = as_report(make_report(tuned=TUNED, num_layers=12))
    units = [UnitDiff(t, layer, module, "head", h, 1e-4 * (1 + h) * (1 + i), 1.0)
             for i, t in enumerate(TUNED) for layer in range(12) for module, count in (("q_proj", 8), ("k_proj", 2))
             for h in range(count)]
    units += [UnitDiff(t, layer, "expert_down_proj", "expert", e, 1e-4 * (1 + e % 5) * (1 + layer), 1.0)
              for t in TUNED[:2] for layer in range(12) for e in range(64)]
    report.units = UnitTable.of(units)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    _configure_matplotlib()
    out = []
    for name, fig in iter_figures(report):
        if not hasattr(fig.canvas, "get_renderer"):
            FigureCanvasAgg(fig)
        fig.savefig(io.BytesIO(), format="png")  # the draw that places axis labels and titles
        out.append((name, fig))
    from weightsurgeon.report.compare import Pattern, figure_agreement, figure_modules
    from weightsurgeon.report.figures import lay_out
    from weightsurgeon.report.findings import Finding

    patterns = [Pattern(name, name, name, None) for name in ("1.5b", "7b-with-a-longer-name", "32b")]
    rows = [{"pattern": p.name, "module": m, "median_rel_l2": 0.01 * (i + 1) * (j + 1)}
            for i, p in enumerate(patterns) for j, m in enumerate(("q_proj", "o_proj", "post_attention_layernorm"))]
    agreement = [Finding("agreement", "", {"a": a.name, "b": b.name, "rho": 0.5})
                 for a, b in itertools.combinations(patterns, 2)]
    for name, fig in (("compare_modules", figure_modules(patterns, rows)),
                      ("compare_agreement", figure_agreement(patterns, agreement))):
        lay_out(fig)
        FigureCanvasAgg(fig)
        fig.savefig(io.BytesIO(), format="png")
        out.append((name, fig))
    return out


def _boxes(fig):
    """(what, display bbox) of every drawn text group: each axes with its tick labels, axis
    labels and titles, each figure legend, the suptitle."""
    renderer = fig.canvas.get_renderer()
    for i, ax in enumerate(fig.axes):
        if ax.get_visible():
            yield f"axes {i} ({ax.get_label() or ax.get_title()})", ax.get_tightbbox(renderer)
    for legend in fig.legends:
        yield "legend", legend.get_window_extent(renderer)
    if fig._suptitle is not None:
        yield "suptitle", fig._suptitle.get_window_extent(renderer)


def test_every_figure_is_drawn(figures) -> None:
    names = [name for name, _ in figures]
    assert names == ["l2_by_layer", "rel_change_hist", "rel_l2_heatmap", "delta_share", "heads_q_proj",
                     "heads_k_proj", "experts", "compare_modules", "compare_agreement"]


def test_no_text_leaves_the_picture(figures) -> None:
    """The tight box of each panel (frame, tick labels, axis labels, title), the colour bar, the
    legend and the suptitle lie inside the figure: nothing clipped at an edge."""
    for name, fig in figures:
        page = fig.bbox
        for what, box in _boxes(fig):
            assert box.x0 >= page.x0 - 1 and box.y0 >= page.y0 - 1, (name, what, box, page)
            assert box.x1 <= page.x1 + 1 and box.y1 <= page.y1 + 1, (name, what, box, page)


def test_no_two_text_groups_overlap(figures) -> None:
    """Neighbouring panels, the colour bar, the legend and the suptitle do not run into each other."""
    for name, fig in figures:
        boxes = list(_boxes(fig))
        for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
            w = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
            h = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
            assert w <= 1 or h <= 1, (name, a, b, box_a, box_b)


def test_panels_fill_the_figure(figures) -> None:
    """Margins come from the texts, not from a fixed share: the panels' grid spans most of the figure."""
    for name, fig in figures:
        frames = [ax.get_position() for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
        width = max(f.x1 for f in frames) - min(f.x0 for f in frames)
        height = max(f.y1 for f in frames) - min(f.y0 for f in frames)
        assert width > 0.5 and height > 0.5, (name, width, height)


def test_log_ticks_are_labelled_in_plain_text(figures) -> None:
    """Log axes and log colour bars say 10⁻² in plain text: mathtext ($10^{-2}$) was parsed
    again by every renderer, the largest single cost of drawing the figures."""
    labels = []
    for _, fig in figures:
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                if axis.get_scale() == "log":
                    labels += [t.get_text() for t in axis.get_majorticklabels() + axis.get_minorticklabels()]
    labels = [t for t in labels if t]
    assert len(labels) > 10
    assert not [t for t in labels if "$" in t], labels
    assert any("10⁻" in t for t in labels), labels


@pytest.mark.parametrize("mathtext, plain", [
    (r"$\mathdefault{10^{-3}}$", "10⁻³"),
    (r"$\mathdefault{10^{12}}$", "10¹²"),
    (r"$\mathdefault{10^{0}}$", "10⁰"),
    (r"$\mathdefault{2\times10^{-1}}$", "2×10⁻¹"),
    (r"$\mathdefault{1}$", "1"),
    ("0.5", "0.5"),
    ("", ""),
])
def test_plain_text_power(mathtext: str, plain: str) -> None:
    assert plain_text_power(mathtext) == plain


def test_plain_log_labels_follow_matplotlib_choice_of_ticks() -> None:
    """The plain formatter labels the same ticks matplotlib's would (decades; sub-decade ticks on a short axis)."""
    from matplotlib.figure import Figure

    from weightsurgeon.report.figures import plain_log_labels

    for low, high in ((1e-5, 1.0), (0.02, 0.09)):
        fig = Figure()
        ax = fig.subplots()
        ax.plot([0, 1], [low, high])
        ax.set_yscale("log")
        before = [t.get_text() for t in ax.yaxis.get_majorticklabels() + ax.yaxis.get_minorticklabels()]
        plain_log_labels(fig)
        after = [t.get_text() for t in ax.yaxis.get_majorticklabels() + ax.yaxis.get_minorticklabels()]
        assert after == [plain_text_power(t) for t in before]
        assert sum(bool(t) for t in after) >= 2, after
