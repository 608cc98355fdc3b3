"""Chart builders for the HTML reports: plain series in, plotly figures (as plotly's JSON) out.

The builders know nothing of runs or sweeps: a `Series` is a named line of (x, y) points, a
`Panel` a titled y axis of series. `stacked_panels` draws panels one above the other on a shared
x axis (so request rate, TTFT, GPU use, power and KV cache line up in time), `line_chart` one
panel with optional horizontal threshold lines (an SLO), `quantile_grid` latency distributions as
percentile curves. A log axis carries its magnitudes (`log_ticks`: 10 ms, 100 ms, 1 s; or 0.5,
1, 10 for other units), not plotly's bare 2 and 5 between decades. A series keeps its colour
everywhere through `ColourMap`, so a target has one colour on the whole page. A `Chart` is the
figure as plotly.js takes it, laid out here as plotly.subplots would lay it out; figures are rendered
into a page by analysis/report/page.py.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from typing import Any

from plotly.colors import qualitative

PANEL_HEIGHT_PX = 230
TEMPLATE = "plotly_white"


@dataclass(frozen=True)
class Series:
    """One line: `name` (legend; a name shows there once per figure), points (x[i], y[i]), style."""

    name: str
    x: Sequence[float]
    y: Sequence[float | None]
    colour: str | None = None
    dash: str | None = None  # plotly dash style: "dot", "dash", ...
    mode: str = "lines"
    hover: Sequence[str] | None = None  # a text per point, shown on hover (e.g. which load point it is)


@dataclass(frozen=True)
class Threshold:
    """A horizontal line at `y` labelled `label` (an SLO threshold)."""

    y: float
    label: str


@dataclass(frozen=True)
class XMarker:
    """A vertical line at `x` labelled `label` (a sweep's saturation point or SLO capacity)."""

    x: float
    label: str
    colour: str = "#52606d"
    side: str = "right"  # of the line where the label goes: "right" or "left"


@dataclass(frozen=True)
class Band:
    """A shaded x interval [x0, x1] labelled `label` (the steady window)."""

    x0: float
    x1: float
    label: str


@dataclass(frozen=True)
class Panel:
    """One y axis: its title, unit label, series and thresholds."""

    title: str
    y_title: str
    series: Sequence[Series]
    thresholds: Sequence[Threshold] = ()
    log_y: bool = False


def _magnitude(value: float, unit: str) -> str:
    """A log axis tick: `10 ms`, `100 ms`, `1 s`, `20 s` for milliseconds; `0.5`, `10`, `1,000` otherwise."""
    if unit == "ms":
        if value >= 1000:
            return f"{value / 1000:,g} s"
        return f"{value:g} ms"
    return f"{value:,g}"


def log_ticks(values: Sequence[float | None], unit: str) -> dict:
    """Tick settings for a log axis over `values` (the positive ones), each label carrying its magnitude
    (`_magnitude`): one tick a decade where three or more decades fall inside the values, else 1-2-5
    steps; where fewer than two of those fall inside (values within a factor of about 2), plotly's own
    ticks, which then read as whole values, with the unit as a suffix for ms. Empty for no positive value."""
    positive = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not positive:
        return {}
    low, high = min(positive) * (1 - 1e-9), max(positive) * (1 + 1e-9)
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for steps, enough in (((1,), 3), ((1, 2, 5), 2)):
        ticks = [float(f"{m * 10.0**k:.12g}") for k in range(first, last + 1) for m in steps]
        inside = [tick for tick in ticks if low <= tick <= high]
        if len(inside) >= enough:
            return {"tickmode": "array", "tickvals": inside, "ticktext": [_magnitude(t, unit) for t in inside]}
    return {"ticksuffix": " ms"} if unit == "ms" else {}


def _series_values(series: Sequence[Series], axis: str) -> list[float | None]:
    return [v for s in series for v in (s.x if axis == "x" else s.y)]


@dataclass
class ColourMap:
    """A stable colour per name, in order of first use, from plotly's qualitative palette."""

    palette: Sequence[str] = field(default_factory=lambda: list(qualitative.Plotly))
    assigned: dict[str, str] = field(default_factory=dict)

    def __call__(self, name: str) -> str:
        if name not in self.assigned:
            self.assigned[name] = self.palette[len(self.assigned) % len(self.palette)]
        return self.assigned[name]


def _trace(series: Series, show_legend: bool, x_axis: str, y_axis: str) -> dict[str, Any]:
    line = {"color": series.colour, "dash": series.dash}
    trace = {
        "type": "scatter",
        "x": list(series.x),
        "y": list(series.y),
        "xaxis": x_axis,
        "yaxis": y_axis,
        "name": series.name,
        "legendgroup": series.name,
        "showlegend": show_legend,
        "mode": series.mode,
        "line": {key: value for key, value in line.items() if value is not None},
        "connectgaps": False,
    }
    if series.hover is not None:
        trace["hovertext"] = list(series.hover)
    return trace


@cache
def _template() -> dict[str, Any]:
    """plotly's TEMPLATE as the JSON plotly.py ships it (read once; plotly.js applies a template given as JSON)."""
    text = (files("plotly") / "package_data" / "templates" / f"{TEMPLATE}.json").read_text(encoding="utf-8")
    return json.loads(text)


@dataclass(frozen=True)
class Chart:
    """A figure in plotly's JSON schema, the form plotly.js draws: `data` (a dict per trace) and `layout`.

    Built here as plain JSON, not through plotly.py's figure objects: those validate every property as it
    is set, which took most of a report page's second. tests/unit/analysis/test_charts.py has plotly.py
    validate every kind of chart built here."""

    data: list[dict[str, Any]]
    layout: dict[str, Any]

    def trace(self, name: str) -> dict[str, Any]:
        """The first trace named `name`."""
        return next(trace for trace in self.data if trace["name"] == name)

    def axes(self, letter: str) -> list[dict[str, Any]]:
        """The layout's x (`letter` "x") or y axes, in subplot order."""
        return [self.layout[key] for key in _axis_keys(self.layout, letter)]

    def to_plotly(self) -> dict[str, Any]:
        """The figure with its template, for plotly.io.to_html."""
        return {"data": self.data, "layout": {"template": _template(), **self.layout}}


def _axis_keys(layout: dict[str, Any], letter: str) -> list[str]:
    keys = [key for key in layout if re.fullmatch(f"{letter}axis[0-9]*", key)]
    return sorted(keys, key=lambda key: int(key[5:] or 1))


@dataclass(frozen=True)
class _Grid:
    """A rows x cols grid of subplots, laid out as plotly.subplots.make_subplots does: subplot k (0-based,
    row-major from the top left) has axes x{k+1} and y{k+1} (plain x and y for the first), cells divide
    the paper less the spacings (fractions of it), and a title sits centred above its cell."""

    rows: int
    cols: int
    h_spacing: float
    v_spacing: float

    def refs(self, index: int) -> tuple[str, str]:
        """The x and y axis references of subplot `index` ("x2", "y2")."""
        suffix = "" if index == 0 else str(index + 1)
        return f"x{suffix}", f"y{suffix}"

    def _domains(self, index: int) -> tuple[list[float], list[float]]:
        row, col = divmod(index, self.cols)
        width = (1.0 - self.h_spacing * (self.cols - 1)) / self.cols
        height = (1.0 - self.v_spacing * (self.rows - 1)) / self.rows
        x0 = col * (width + self.h_spacing)
        y0 = (self.rows - 1 - row) * (height + self.v_spacing)  # from the bottom, so the last row starts at 0
        return [x0, min(x0 + width, 1.0)], [y0, min(y0 + height, 1.0)]

    def layout(self, titles: Sequence[str]) -> dict[str, Any]:
        """Axes for one subplot per title, anchored to each other, and the titles as annotations."""
        layout: dict[str, Any] = {"annotations": [], "shapes": []}
        for index, title in enumerate(titles):
            x_ref, y_ref = self.refs(index)
            x_domain, y_domain = self._domains(index)
            layout[f"xaxis{x_ref[1:]}"] = {"anchor": y_ref, "domain": x_domain}
            layout[f"yaxis{y_ref[1:]}"] = {"anchor": x_ref, "domain": y_domain}
            layout["annotations"].append(
                {
                    "text": title,
                    "font": {"size": 16},
                    "showarrow": False,
                    "xref": "paper",
                    "x": (x_domain[0] + x_domain[1]) / 2,
                    "xanchor": "center",
                    "yref": "paper",
                    "y": y_domain[1],
                    "yanchor": "bottom",
                }
            )
        return layout


def _axis(layout: dict[str, Any], ref: str) -> dict[str, Any]:
    """The layout entry of axis reference `ref` ("x2" -> layout["xaxis2"])."""
    return layout[f"{ref[0]}axis{ref[1:]}"]


def _style(layout: dict[str, Any], height: int, hovermode: str = "x unified") -> dict[str, Any]:
    return layout | {
        "height": height,
        "margin": {"l": 60, "r": 20, "t": 50, "b": 40},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
        "modebar": {"orientation": "v"},
        "hovermode": hovermode,
    }


def _on_axis(value: float, log: bool) -> float:
    """Where plotly.js places an annotation at data value `value`: on a log axis by log10(value)
    (shapes take the value itself)."""
    return math.log10(value) if log else value


def stacked_panels(
    panels: Sequence[Panel],
    x_title: str,
    bands: Sequence[Band] = (),
    markers: Sequence[XMarker] = (),
    log_x: bool = False,
    y_from_zero: bool = False,
) -> Chart:
    """Panels stacked on one shared x axis; a name's first series shows in the legend, later ones follow it.
    `markers` are vertical lines across every panel, labelled above the top one; `log_x` makes x logarithmic;
    `y_from_zero` starts each linear y axis at 0."""
    return Chart(*_stacked(panels, x_title, bands, markers, log_x, y_from_zero, PANEL_HEIGHT_PX * len(panels) + 80))


def _stacked(
    panels: Sequence[Panel],
    x_title: str,
    bands: Sequence[Band],
    markers: Sequence[XMarker],
    log_x: bool,
    y_from_zero: bool,
    height: int,
    hovermode: str = "x unified",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    grid = _Grid(rows=len(panels), cols=1, h_spacing=0.0, v_spacing=0.06)
    layout = grid.layout([panel.title for panel in panels])
    shapes, annotations = layout["shapes"], layout["annotations"]
    data: list[dict[str, Any]] = []
    rows = [grid.refs(row) for row in range(len(panels))]
    bottom_x = rows[-1][0]
    seen: set[str] = set()
    for (x_ref, y_ref), panel in zip(rows, panels, strict=True):
        for series in panel.series:
            data.append(_trace(series, series.name not in seen, x_ref, y_ref))
            seen.add(series.name)
        for threshold in panel.thresholds:
            if panel.log_y and threshold.y <= 0:
                continue  # no place on a log axis
            shapes.append(
                {
                    "type": "line",
                    "xref": f"{x_ref} domain",
                    "x0": 0,
                    "x1": 1,
                    "yref": y_ref,
                    "y0": threshold.y,
                    "y1": threshold.y,
                    "line": {"color": "crimson", "dash": "dash"},
                }
            )
            annotations.append(
                {
                    "text": threshold.label,
                    "showarrow": False,
                    "xref": f"{x_ref} domain",
                    "x": 1.0,
                    "xanchor": "right",
                    "yref": y_ref,
                    "y": _on_axis(threshold.y, panel.log_y),
                    "yanchor": "bottom",
                }
            )
        y_axis = _axis(layout, y_ref)
        y_axis.update(title={"text": panel.y_title}, type="log" if panel.log_y else "linear")
        if panel.log_y:
            values = [*_series_values(panel.series, "y"), *(threshold.y for threshold in panel.thresholds)]
            y_axis.update(log_ticks(values, panel.y_title))
        elif y_from_zero:
            y_axis["rangemode"] = "tozero"
        x_axis = _axis(layout, x_ref)
        if x_ref != bottom_x:
            x_axis.update(matches=bottom_x, showticklabels=False)
    for band in bands:
        shapes += [
            {
                "type": "rect",
                "xref": x_ref,
                "x0": band.x0,
                "x1": band.x1,
                "yref": f"{y_ref} domain",
                "y0": 0,
                "y1": 1,
                "fillcolor": "seagreen",
                "opacity": 0.07,
                "line": {"width": 0},
            }
            for x_ref, y_ref in rows
        ]
    for marker in markers:
        shapes += [
            {
                "type": "line",
                "xref": x_ref,
                "x0": marker.x,
                "x1": marker.x,
                "yref": f"{y_ref} domain",
                "y0": 0,
                "y1": 1,
                "line": {"color": marker.colour, "dash": "dashdot", "width": 1.5},
            }
            for x_ref, y_ref in rows
        ]
    if bands:
        annotations.append(
            {
                "text": bands[0].label,
                "font": {"size": 10, "color": "seagreen"},
                "showarrow": False,
                "xref": "x",
                "x": _on_axis(bands[0].x0, log_x),
                "xanchor": "left",
                "yref": "paper",
                "y": 1.0,
                "yanchor": "bottom",
            }
        )
    for index, marker in enumerate(markers):
        annotations.append(
            {
                "text": marker.label,
                "font": {"size": 10, "color": marker.colour},
                "bgcolor": "rgba(255, 255, 255, 0.8)",
                "showarrow": False,
                "xref": "x",
                "x": _on_axis(marker.x, log_x),
                "xanchor": "left" if marker.side == "right" else "right",
                "yref": "paper",
                "y": 1.0,
                "yanchor": "top",
                "yshift": -16 * index,  # one label under the other where markers are close
            }
        )
    _axis(layout, bottom_x)["title"] = {"text": x_title}
    x_ticks: dict[str, Any] = {"type": "linear"}
    if log_x:
        x_values = [*(v for panel in panels for v in _series_values(panel.series, "x")), *(m.x for m in markers)]
        x_ticks = {"type": "log", **log_ticks(x_values, x_title)}
    for x_ref, _ in rows:
        _axis(layout, x_ref).update(x_ticks)
    return data, _style(layout, height, hovermode)


def line_chart(
    panel: Panel,
    x_title: str,
    log_x: bool = False,
    markers: Sequence[XMarker] = (),
    hovermode: str = "x unified",
) -> Chart:
    """One panel as its own figure (e.g. a sweep's TTFT p95 against offered rate, with the SLO line)."""
    return Chart(*_stacked([panel], x_title, (), markers, log_x, False, PANEL_HEIGHT_PX + 160, hovermode))


def quantile_grid(panels: Sequence[Panel], columns: int = 2) -> Chart:
    """Distributions as quantile curves (x: value, y: percentile), one subplot per panel, log x axes."""
    grid = _Grid(rows=math.ceil(len(panels) / columns), cols=columns, h_spacing=0.08, v_spacing=0.14)
    layout = grid.layout([panel.title for panel in panels])
    data: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, panel in enumerate(panels):
        x_ref, y_ref = grid.refs(index)
        for series in panel.series:
            data.append(_trace(series, series.name not in seen, x_ref, y_ref))
            seen.add(series.name)
        _axis(layout, x_ref).update(
            title={"text": panel.y_title}, type="log", **log_ticks(_series_values(panel.series, "x"), panel.y_title)
        )
        _axis(layout, y_ref).update(title={"text": "percentile"}, range=[0, 100])
    return Chart(data, _style(layout, (PANEL_HEIGHT_PX + 90) * grid.rows + 60, hovermode="closest"))
