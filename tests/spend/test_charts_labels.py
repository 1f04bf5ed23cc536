"""Charts that survive real names: long and hostile run/experiment names, legends off the data, one money format."""

from __future__ import annotations

import html
import re
import warnings
from typing import Callable

import pytest

from mlflow_finops.charting import Chart, label, shorten
from mlflow_finops.money import format_usd
from mlflow_finops.spend.charts import budget_burndown, cost_over_time, cost_vs_metric

from .test_charts import status

LONG = "n" * 100
HOSTILE = '<script>alert("x")</script> & $5 \\n {bad} %s\n\ttab ' + "y" * 60
T0 = 1_800_000_000.0


def draw(make: Callable[[], Chart]) -> Chart:
    """Draw with every warning caught: a chart that needs one (collapsed layout, mathtext) fails."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chart = make()
    assert [str(w.message) for w in caught] == []
    return chart


def unescape(text: str) -> str:
    return text.replace("\\$", "$")


def assert_room_for_the_data(chart: Chart) -> None:
    """The plot keeps >= 60% of the figure's width, the legend sits outside it and inside the figure."""
    fig = chart.figure
    assert fig is not None
    ax = fig.axes[0]
    assert ax.get_position().width >= 0.6
    assert ax.get_legend() is None and len(fig.legends) == 1
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    plot = ax.get_window_extent(renderer)
    assert legend.y1 <= plot.y0, "legend below the axes, never over the data"
    assert 0 <= legend.x0 and legend.x1 <= fig.bbox.width


@pytest.mark.parametrize("name", [LONG, HOSTILE])
def test_cost_vs_metric_keeps_its_width_and_the_full_name_in_html(name: str) -> None:
    points = [(name, 2.0, 0.99, name), ("cheap", 0.1, 0.7, "exp2"), ("mid", 1.0, 0.9, "exp2")]
    chart = draw(lambda: cost_vs_metric(points, "accuracy", "max"))
    assert_room_for_the_data(chart)
    legend = [unescape(t.get_text()) for t in chart.figure.legends[0].get_texts()]
    assert shorten(name) in legend and len(shorten(name)) == 40 and shorten(name).endswith("\u2026")
    notes = [unescape(t.get_text()) for t in chart.figure.axes[0].texts]
    assert shorten(name, 24) in notes
    page = chart.pair()[1]
    tips = re.findall(r"<title>([^<]*)</title>", page)
    assert f"{html.escape(name)} ({html.escape(name)}): $2.00, accuracy 0.99" in tips
    assert "<script>" not in page


@pytest.mark.parametrize("name", [LONG, HOSTILE])
def test_cost_over_time_legend_is_below_and_in_money_format(name: str) -> None:
    points = [(name, T0, 0.1), ("big", T0 + 60, 5.0), ("big", T0 + 3600, 7.5)]
    chart = draw(lambda: cost_over_time(points, "Cost over time per experiment"))
    assert_room_for_the_data(chart)
    legend = [unescape(t.get_text()) for t in chart.figure.legends[0].get_texts()]
    assert legend == [f"big ({format_usd(12.5)})", f"{shorten(name)} ({format_usd(0.1)})"]
    assert legend[1].endswith("($0.10)")  # never $0.1
    assert name in [row[0] for row in chart.rows]  # the data table keeps the whole name
    assert html.escape(name) in chart.pair()[1]


def test_cost_axes_tick_in_money_format() -> None:
    over_time = draw(lambda: cost_over_time([("a", T0, 0.1), ("a", T0 + 60, 0.3)]))
    vs_metric = draw(lambda: cost_vs_metric([("a", 0.1, 0.7, "e"), ("b", 0.3, 0.8, "e")], "accuracy"))
    burn = draw(lambda: budget_burndown([status("churn", 12.0, projected=24.0), status("x" * 100, 1.0)]))
    for axis in (over_time.figure.axes[0].yaxis, vs_metric.figure.axes[0].xaxis, burn.figure.axes[0].yaxis):
        ticks = [t for t in axis.get_ticklabels() if t.get_text()]
        assert ticks
        for t in ticks:
            assert re.fullmatch(r"-?\$[\d,]+\.\d{2,}", unescape(t.get_text())), t.get_text()


def test_burndown_legends_stay_off_the_plot() -> None:
    chart = draw(lambda: budget_burndown([status("churn", 9.0), status("research-" + "q" * 90, 1.0)]))
    renderer = chart.figure.canvas.get_renderer()
    for ax in chart.figure.axes:
        assert ax.get_legend().get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y0
        assert len(ax.get_title()) < 80
    texts = [unescape(t.get_text()) for t in chart.figure.axes[0].get_legend().get_texts()]
    assert f"projection: {format_usd(18.0)} spent by period end" in texts


def test_shorten_and_label() -> None:
    assert shorten("short") == "short"
    assert shorten("a  b\nc") == "a b c"
    assert shorten("x" * 41) == "x" * 39 + "\u2026"
    assert label("$" + "9" * 50, 10) == "\\$99999999\u2026"
