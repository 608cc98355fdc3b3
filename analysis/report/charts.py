"""Chart builders for the HTML reports: plain series in, plotly figures out.

The builders know nothing of runs or sweeps: a `Series` is a named line of (x, y) points, a
`Panel` a titled y axis of series. `stacked_panels` draws panels one above the other on a shared
x axis (so request rate, TTFT, GPU use, power and KV cache line up in time), `line_chart` one
panel with optional horizontal threshold lines (an SLO), `quantile_grid` latency distributions as
percentile curves. A log axis carries its magnitudes (`log_ticks`: 10 ms, 100 ms, 1 s; or 0.5,
1, 10 for other units), not plotly's bare 2 and 5 between decades. A series keeps its colour
everywhere through `ColourMap`, so a target has one colour on the whole page. Figures are
rendered into a page by analysis/report/page.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

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


def _trace(series: Series, show_legend: bool) -> go.Scatter:
    return go.Scatter(
        x=list(series.x),
        y=list(series.y),
        name=series.name,
        legendgroup=series.name,
        showlegend=show_legend,
        mode=series.mode,
        line={"color": series.colour, "dash": series.dash},
        connectgaps=False,
        hovertext=None if series.hover is None else list(series.hover),
    )


def _style(fig: go.Figure, height: int) -> go.Figure:
    fig.update_layout(
        template=TEMPLATE,
        height=height,
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
        modebar={"orientation": "v"},
        hovermode="x unified",
    )
    return fig


def stacked_panels(
    panels: Sequence[Panel],
    x_title: str,
    bands: Sequence[Band] = (),
    markers: Sequence[XMarker] = (),
    log_x: bool = False,
) -> go.Figure:
    """Panels stacked on one shared x axis; a name's first series shows in the legend, later ones follow it.
    `markers` are vertical lines across every panel, labelled above the top one; `log_x` makes x logarithmic."""
    fig = make_subplots(
        rows=len(panels),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        subplot_titles=[panel.title for panel in panels],
    )
    seen: set[str] = set()
    for row, panel in enumerate(panels, start=1):
        for series in panel.series:
            fig.add_trace(_trace(series, series.name not in seen), row=row, col=1)
            seen.add(series.name)
        for threshold in panel.thresholds:
            if not panel.log_y:
                fig.add_hline(
                    y=threshold.y,
                    line_dash="dash",
                    line_color="crimson",
                    annotation_text=threshold.label,
                    row=row,
                    col=1,
                )
                continue
            # plotly places a shape on a log axis by its value but an annotation by log10(value): label it by hand.
            fig.add_hline(y=threshold.y, line_dash="dash", line_color="crimson", row=row, col=1)
            y_axis = fig.get_subplot(row, 1).yaxis.plotly_name.replace("axis", "")
            x_axis = fig.get_subplot(row, 1).xaxis.plotly_name.replace("axis", "")
            fig.add_annotation(
                x=1.0,
                xref=f"{x_axis} domain",
                xanchor="right",
                y=math.log10(threshold.y),
                yref=y_axis,
                yanchor="bottom",
                showarrow=False,
                text=threshold.label,
            )
        fig.update_yaxes(title_text=panel.y_title, type="log" if panel.log_y else "linear", row=row, col=1)
        if panel.log_y:
            values = [*_series_values(panel.series, "y"), *(threshold.y for threshold in panel.thresholds)]
            fig.update_yaxes(**log_ticks(values, panel.y_title), row=row, col=1)
    for band in bands:
        fig.add_vrect(x0=band.x0, x1=band.x1, fillcolor="seagreen", opacity=0.07, line_width=0, row="all", col=1)
    if bands:
        fig.add_annotation(
            x=bands[0].x0,
            y=1.0,
            yref="paper",
            xanchor="left",
            yanchor="bottom",
            showarrow=False,
            text=bands[0].label,
            font={"size": 10, "color": "seagreen"},
        )
    for index, marker in enumerate(markers):
        fig.add_vline(x=marker.x, line_dash="dashdot", line_color=marker.colour, line_width=1.5, row="all", col=1)
        fig.add_annotation(
            x=math.log10(marker.x) if log_x else marker.x,  # plotly places annotations on a log axis by log10(x)
            y=1.0,
            xref="x",
            yref="paper",
            xanchor="left" if marker.side == "right" else "right",
            yanchor="top",
            yshift=-16 * index,  # one label under the other where markers are close
            showarrow=False,
            text=marker.label,
            bgcolor="rgba(255, 255, 255, 0.8)",
            font={"size": 10, "color": marker.colour},
        )
    fig.update_xaxes(title_text=x_title, row=len(panels), col=1)
    if log_x:
        x_values = [*(v for panel in panels for v in _series_values(panel.series, "x")), *(m.x for m in markers)]
        fig.update_xaxes(type="log", **log_ticks(x_values, x_title))
    return _style(fig, PANEL_HEIGHT_PX * len(panels) + 80)


def line_chart(panel: Panel, x_title: str, log_x: bool = False, markers: Sequence[XMarker] = ()) -> go.Figure:
    """One panel as its own figure (e.g. a sweep's TTFT p95 against offered rate, with the SLO line)."""
    fig = stacked_panels([panel], x_title, markers=markers, log_x=log_x)
    fig.update_xaxes(type="log" if log_x else "linear")
    return _style(fig, PANEL_HEIGHT_PX + 160)


def quantile_grid(panels: Sequence[Panel], columns: int = 2) -> go.Figure:
    """Distributions as quantile curves (x: value, y: percentile), one subplot per panel, log x axes."""
    rows = math.ceil(len(panels) / columns)
    fig = make_subplots(
        rows=rows,
        cols=columns,
        subplot_titles=[panel.title for panel in panels],
        horizontal_spacing=0.08,
        vertical_spacing=0.14,
    )
    seen: set[str] = set()
    for index, panel in enumerate(panels):
        row, col = index // columns + 1, index % columns + 1
        for series in panel.series:
            fig.add_trace(_trace(series, series.name not in seen), row=row, col=col)
            seen.add(series.name)
        fig.update_xaxes(
            title_text=panel.y_title,
            type="log",
            **log_ticks(_series_values(panel.series, "x"), panel.y_title),
            row=row,
            col=col,
        )
        fig.update_yaxes(title_text="percentile", range=[0, 100], row=row, col=col)
    fig = _style(fig, (PANEL_HEIGHT_PX + 90) * rows + 60)
    fig.update_layout(hovermode="closest")
    return fig
