"""Log-scale chart axes carry their magnitudes (analysis/report/charts.py): the figure's layout JSON
names every tick with its value and unit (10 ms, 100 ms, 1 s), not plotly's bare 2 and 5."""

from __future__ import annotations

import json

import pytest

from shadowreplay.analysis.report.charts import (
    Panel,
    Series,
    Threshold,
    line_chart,
    log_ticks,
    quantile_grid,
    stacked_panels,
)


def layout(figure) -> dict:
    return json.loads(figure.to_json())["layout"]


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
