"""The charts of analysis/report/charts.py: log-scale axes carry their magnitudes (the figure's layout
JSON names every tick with its value and unit, 10 ms, 100 ms, 1 s, not plotly's bare 2 and 5); every
kind of chart, built as plotly JSON by hand, is one plotly.py accepts as valid and lays out as
plotly.subplots.make_subplots would."""

from __future__ import annotations

import json
import math

import plotly.graph_objects as go
import pytest
from plotly.subplots import make_subplots

from shadowreplay.analysis.report.charts import (
    Band,
    Chart,
    Panel,
    Series,
    Threshold,
    XMarker,
    line_chart,
    log_ticks,
    quantile_grid,
    stacked_panels,
)


def layout(figure: Chart) -> dict:
    return json.loads(json.dumps(figure.to_plotly()))["layout"]


LATENCY = Panel(
    "TTFT",
    "ms",
    [Series("a", [1, 2, 3], [8.0, 90.0, None], colour="#111111"), Series("b", [1, 2, 3], [5.0, 50.0, 500.0])],
    [Threshold(100.0, "SLO 100 ms")],
    log_y=True,
)
RATE = Panel(
    "Rate",
    "req/s",
    [Series("a", [1, 2, 3], [1.0, 2.0, 3.0], dash="dot", mode="lines+markers", hover=["p1", "p2", "p3"])],
    [Threshold(2.5, "limit")],
)
ERRORS = Panel("Errors", "%", [Series("b", [1, 2, 3], [0.0, 0.5, 1.0])])
CHARTS = {
    "stacked, band": lambda: stacked_panels([RATE, LATENCY, ERRORS], "run time (s)", bands=[Band(1.0, 2.5, "steady")]),
    "stacked, log x, markers": lambda: stacked_panels(
        [RATE, LATENCY],
        "offered requests/s",
        markers=[XMarker(2.0, "saturation"), XMarker(2.2, "SLO", side="left")],
        log_x=True,
        y_from_zero=True,
    ),  # fmt: skip
    "line": lambda: line_chart(LATENCY, "offered requests/s", hovermode="closest"),
    "line, log x": lambda: line_chart(RATE, "users", log_x=True, markers=[XMarker(2.0, "saturation")]),
    "grid 2x2, 3 panels": lambda: quantile_grid([LATENCY, RATE, ERRORS]),
    "grid 1 column": lambda: quantile_grid([LATENCY, RATE], columns=1),
}


@pytest.mark.parametrize("kind", list(CHARTS))
def test_every_chart_is_a_figure_plotly_accepts(kind):
    chart = CHARTS[kind]()
    figure = go.Figure(chart.to_plotly())  # plotly.py validates every property; an unknown one raises
    assert len(figure.data) == len(chart.data)
    assert json.loads(figure.to_json())["layout"]["height"] == chart.layout["height"]


@pytest.mark.parametrize(
    ("panels", "columns", "spacing"), [(3, 1, (0.0, 0.06)), (3, 2, (0.08, 0.14)), (4, 2, (0.08, 0.14))]
)
def test_subplots_are_laid_out_as_make_subplots_lays_them_out(panels, columns, spacing):
    chosen = [LATENCY, RATE, ERRORS, RATE][:panels]
    chart = stacked_panels(chosen, "t") if columns == 1 else quantile_grid(chosen, columns=columns)
    rows = -(-panels // columns)
    reference = make_subplots(
        rows=rows, cols=columns, horizontal_spacing=spacing[0], vertical_spacing=spacing[1],
        subplot_titles=[panel.title for panel in chosen],
    ).to_plotly_json()["layout"]  # fmt: skip
    for key, axis in reference.items():
        if key[1:5] == "axis" and key in chart.layout:
            assert chart.layout[key]["domain"] == pytest.approx(list(axis["domain"])), key
            assert chart.layout[key]["anchor"] == axis["anchor"], key
    titles = [a for a in chart.layout["annotations"] if a["text"] in {panel.title for panel in chosen}]
    assert [v for a in titles for v in (a["x"], a["y"])] == pytest.approx(
        [v for a in reference["annotations"] for v in (a["x"], a["y"])]
    )
    axes = sum(1 for key in chart.layout if key[1:5] == "axis")
    assert axes == 2 * panels  # a grid cell without a panel gets no empty axes


def test_shared_x_axes_follow_the_bottom_one_and_markers_cross_every_panel():
    chart = CHARTS["stacked, log x, markers"]()
    top, bottom = chart.axes("x")
    assert (
        top["matches"] == "x2" and top["showticklabels"] is False and bottom["title"] == {"text": "offered requests/s"}
    )
    assert top["type"] == bottom["type"] == "log"
    assert [axis.get("rangemode") for axis in chart.axes("y")] == ["tozero", None]  # not on the log axis
    lines = [(s["xref"], s["x0"]) for s in chart.layout["shapes"] if s["x0"] == s["x1"]]
    assert lines == [("x", 2.0), ("x2", 2.0), ("x", 2.2), ("x2", 2.2)]
    labels = {a["text"]: a for a in chart.layout["annotations"]}
    assert labels["saturation"]["x"] == pytest.approx(math.log10(2.0))  # plotly.js places it by log10 on a log axis
    assert labels["SLO 100 ms"]["y"] == pytest.approx(2.0) and labels["limit"]["y"] == 2.5
    assert [t["showlegend"] for t in chart.data] == [True, False, True]  # "a" shows once


def test_decades_of_milliseconds_read_as_ms_then_s():
    ticks = log_ticks([8.0, 340.0, 8_500.0, None], "ms")
    assert ticks["tickmode"] == "array"
    assert ticks["tickvals"] == [10.0, 100.0, 1000.0]
    assert ticks["ticktext"] == ["10 ms", "100 ms", "1 s"]
    wide = log_ticks([0.5, 42_000.0], "ms")
    assert wide["ticktext"] == ["1 ms", "10 ms", "100 ms", "1 s", "10 s"]


def test_less_than_two_decades_get_1_2_5_steps():
    assert log_ticks([15.0, 900.0], "ms")["ticktext"] == ["20 ms", "50 ms", "100 ms", "200 ms", "500 ms"]
    assert log_ticks([12.0, 8_500.0], "ms")["ticktext"] == [
        "20 ms", "50 ms", "100 ms", "200 ms", "500 ms", "1 s", "2 s", "5 s"
    ]  # fmt: skip
    assert log_ticks([0.3, 40.0], "offered requests/s")["ticktext"] == ["0.5", "1", "2", "5", "10", "20"]
    assert log_ticks([1.0, 1500.0], "closed-loop users")["ticktext"] == ["1", "10", "100", "1,000"]


def test_a_narrow_range_keeps_plotly_ticks_with_the_unit():
    assert log_ticks([21.0, 24.0], "ms") == {"ticksuffix": " ms"}
    assert log_ticks([21.0, 24.0], "tokens/s") == {}
    assert log_ticks([None, 0.0], "ms") == {}


def test_a_log_y_panel_carries_its_magnitudes_in_the_layout():
    panel = Panel("TTFT p95", "ms", [Series("TTFT p95", [1, 2, 4, 8], [8.0, 40.0, 600.0, 4_000.0])],
                  [Threshold(500.0, "SLO ttft_p95=500ms")], log_y=True)  # fmt: skip
    axis = layout(line_chart(panel, "offered requests/s"))["yaxis"]
    assert axis["type"] == "log" and axis["tickmode"] == "array"
    assert axis["ticktext"] == ["10 ms", "100 ms", "1 s"] and axis["tickvals"] == [10.0, 100.0, 1000.0]


def test_a_linear_panel_keeps_plotly_ticks():
    panel = Panel("Requests", "requests/s", [Series("rps", [0, 1, 2], [1.0, 50.0, 300.0])])
    axis = layout(stacked_panels([panel], "run time (s)"))["yaxis"]
    assert axis.get("type") in (None, "linear") and "tickvals" not in axis and "ticktext" not in axis


def test_a_log_x_load_axis_is_labelled_by_its_values():
    panel = Panel("TTFT", "ms", [Series("p95", [0.5, 2.0, 8.0, 64.0], [20.0, 22.0, 30.0, 900.0])], log_y=True)
    axes = layout(stacked_panels([panel], "offered requests/s", log_x=True))
    assert axes["xaxis"]["type"] == "log"
    assert axes["xaxis"]["ticktext"] == ["0.5", "1", "2", "5", "10", "20", "50"]
    assert axes["yaxis"]["ticktext"] == ["20 ms", "50 ms", "100 ms", "200 ms", "500 ms"]


@pytest.mark.parametrize("columns", [1, 2])
def test_quantile_grid_log_x_axes_carry_ms(columns):
    panels = [
        Panel("TTFT", "ms", [Series("a", [3.0, 40.0, 2_500.0], [0, 50, 100])]),
        Panel("ITL", "ms", [Series("a", [0.2, 5.0, 80.0], [0, 50, 100])]),
    ]
    axes = layout(quantile_grid(panels, columns=columns))
    assert axes["xaxis"]["type"] == "log" and axes["xaxis"]["ticktext"] == ["10 ms", "100 ms", "1 s"]
    assert axes["xaxis2"]["ticktext"] == ["0.2 ms", "0.5 ms", "1 ms", "2 ms", "5 ms", "10 ms", "20 ms", "50 ms"]
