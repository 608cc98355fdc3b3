"""SWEEP_DIR/report.html: a load sweep's curve, saturation point and SLO capacity on one offline page.

Every figure is drawn from SWEEP_DIR/curve.parquet (one row per load point, loadgen/sweep.py's
CURVE_SCHEMA) and the sweep's summary.json (target, shape, SLOs, saturation, SLO capacity); the
table at the end names each point's run directory (SWEEP_DIR/points/...), where its figures were
computed by analysis/summary/run_summary.py from the point's own result rows. This module computes nothing
new: it orders the points by load, draws and lays out.

Contents, top to bottom:
- Against load (x: offered requests/s for Poisson sweeps, users for concurrency sweeps; log scale
  when the levels span 4x or more): achieved requests/s (with the offered rate as a reference),
  output tokens/s, TTFT p95 and p50, TPOT p95, e2e p95 and the error rate, each latency panel with
  its SLO threshold line(s); the saturation point and the SLO capacity as vertical markers.
- Throughput against latency: TTFT p95 and e2e p95 against output tokens/s and against achieved
  requests/s (the latency a given throughput costs), with the SLO lines.
- The curve table and the definitions behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from shadowreplay import installed_version
from shadowreplay.analysis.data.sweep_data import complete_curve, read_sweep
from shadowreplay.analysis.metrics.slo import Slo, parse_slos
from shadowreplay.analysis.report.charts import (
    Chart,
    Panel,
    Series,
    Threshold,
    XMarker,
    line_chart,
    stacked_panels,
)
from shadowreplay.analysis.report.page import Definitions, Figure, ReportPage, Text
from shadowreplay.analysis.summary.models import Saturation, SweepSummary
from shadowreplay.analysis.summary.run_summary import DEFINITIONS as SUMMARY_DEFINITIONS
from shadowreplay.analysis.summary.tables import NO_VALUE, SummaryTable, number
from shadowreplay.replay.schemas.run_dir import CURVE_NAME, SweepDir

LOG_AXIS_SPAN = 4.0
"""An axis is logarithmic when its largest positive value is at least this many times its smallest."""

SLO_CURVE_COLUMNS: dict[str, str] = {
    "ttft_p50": "ttft_p50_ms",
    "ttft_p95": "ttft_p95_ms",
    "tpot_p95": "tpot_p95_ms",
    "e2e_p95": "e2e_p95_ms",
}
"""The SLOs (by name) whose figure the curve holds, and the column holding it."""

SATURATION_COLOUR = "#c2410c"
CAPACITY_COLOUR = "#15803d"
COLOURS = {  # one colour per metric, the same in every figure
    "ttft": "#1f77b4",
    "tpot": "#9467bd",
    "e2e": "#ff7f0e",
    "requests": "#2ca02c",
    "tokens": "#17becf",
}

CURVE_DEFINITIONS: dict[str, str] = {
    "load point": (
        "one complete run at one load level (its run directory under SWEEP_DIR/points/); phase 'ramp' is the "
        "rising series, 'bisect' the points measured while searching the SLO capacity"
    ),
    "offered load": (
        "Poisson sweeps: the arrival rate asked for (requests/s); concurrency sweeps: the closed-loop users "
        "(each sends its next request when the previous one is done)"
    ),
    "achieved req/s": "ok requests done in the point's steady window / the window's length",
    "output tokens/s": "output tokens of the ok requests done in the steady window / the window's length",
    "TTFT p50, p95": "percentiles of send-to-first-output-token over the point's final ok requests",
    "TPOT p95": "95th percentile of (e2e - TTFT) / (output tokens - 1) over the final ok requests",
    "e2e p95": "95th percentile of send-to-last-token over the final ok requests",
    "error rate": "final requests whose status is not ok / final requests",
    "SLO met": "the point's percentiles are all within every SLO threshold (percentile-level SLOs)",
    "saturation": (
        "the first rising-series point (confirmed by its repeat) where a criterion fired: errors (error rate above "
        "the limit), follow (Poisson: kept req/s under the follow ratio x sent req/s), latency (TTFT p95 "
        "above the factor x the lowest-load point's, at least the floor) or throughput (output tokens/s rising less "
        "than the gain over the peak of the points below); each criterion's figures are in summary.json"
    ),
    "sent req/s, kept req/s": (
        "Poisson sweeps: the requests scheduled in the steady window / its length, and the ok requests done in "
        "that window shifted later by the point's median e2e latency / its length; a server that keeps up has kept "
        "= sent x (1 - error rate), lag for lag, however long its requests take"
    ),
    "repeat": (
        "a point measured once more: a saturated point before the ramp stops, or one that missed the SLOs below a "
        "point that met them; when the repeat does not reproduce it, the first is an outlier (shown, not used)"
    ),
    "SLO capacity": (
        "the highest measured load that met every SLO without saturating, below the lowest load (outliers left "
        "out) that did not, refined by bisection (geometric for rates, integer for users) towards that load"
    ),
}


class SweepView:
    """The sweep's curve ordered by load, with what every chart needs to label it.

    `level` is the load column (`offered_rps` or `concurrency`); `points` are the curve's rows sorted
    by level, then point index (the line through them follows rising load).
    """

    def __init__(self, summary: SweepSummary, curve: pl.DataFrame) -> None:
        self.summary = summary
        self.shape: str = summary.shape
        self.concurrency = self.shape == "concurrency"
        self.level = "concurrency" if self.concurrency else "offered_rps"
        self.points = complete_curve(curve).sort(self.level, "point", nulls_last=True)
        self.slos: tuple[Slo, ...] = parse_slos(summary.slos) if summary.slos else ()
        self.capacity: float | None = summary.slo_capacity
        self.saturation: Saturation | None = summary.saturation

    def column(self, name: str) -> list[Any]:
        return self.points.get_column(name).to_list()

    def levels(self) -> list[float]:
        return [float(x) for x in self.column(self.level)]

    def level_text(self, value: float | None) -> str:
        if value is None:
            return NO_VALUE
        return f"{int(value)} users" if self.concurrency else f"{value:.3g} req/s"

    def hover(self) -> list[str]:
        """One text per point: which point, its phase, load and run directory."""
        return [
            f"point {point} ({phase}), {self.level_text(level)}, {run_dir}"
            for point, phase, level, run_dir in zip(
                self.column("point"), self.column("phase"), self.column(self.level), self.column("run_dir"), strict=True
            )
        ]

    def x_title(self) -> str:
        return "closed-loop users" if self.concurrency else "offered requests/s"

    def log_x(self) -> bool:
        return wide(self.levels())

    def thresholds(self, *names: str) -> list[Threshold]:
        """SLO lines for the SLOs named (e.g. `ttft_p95`), those the sweep was given."""
        return [Threshold(slo.threshold_ms, f"SLO {slo}") for slo in self.slos if slo.name in names]

    def markers(self) -> list[XMarker]:
        """The saturation point and the SLO capacity as vertical lines at their load levels."""
        markers = []
        if self.saturation is not None:
            level = float(self.saturation.level)
            markers.append(
                XMarker(
                    level,
                    f"saturation: point {self.saturation.point}, {self.level_text(level)}",
                    SATURATION_COLOUR,
                    side="left",  # the last load measured: the label stays inside the plot
                )
            )
        if self.capacity is not None:
            label = f"SLO capacity {self.level_text(self.capacity)}"
            markers.append(XMarker(float(self.capacity), label, CAPACITY_COLOUR))
        return markers

    def series(self, x: list[float], column: str, name: str, colour: str, scale: float = 1.0, **style: Any) -> Series:
        """The curve's `column` x `scale` against `x`, lines and markers, hover naming each point."""
        values = [None if v is None else v * scale for v in self.column(column)]
        mode = style.pop("mode", "lines+markers")
        return Series(name, x, values, colour=colour, mode=mode, hover=self.hover(), **style)


def wide(values: Sequence[float | None]) -> bool:
    """Whether `values` span LOG_AXIS_SPAN or more (largest / smallest positive value)."""
    positive = [v for v in values if v is not None and v > 0]
    return bool(positive) and max(positive) / min(positive) >= LOG_AXIS_SPAN


def load_panels(view: SweepView) -> list[Panel]:
    """Throughput, latency and errors against the offered load; SLO lines on the latency panels."""
    x = view.levels()
    requests = [view.series(x, "achieved_rps", "achieved req/s", COLOURS["requests"])]
    if not view.concurrency:
        requests.append(Series("offered req/s", x, x, colour="#52606d", dash="dot"))
    ttft = [
        view.series(x, "ttft_p95_ms", "TTFT p95", COLOURS["ttft"]),
        view.series(x, "ttft_p50_ms", "TTFT p50", COLOURS["ttft"], dash="dot"),
    ]
    panels = [
        Panel("Achieved requests/s", "requests/s", requests),
        Panel(
            "Output tokens/s",
            "tokens/s",
            [view.series(x, "output_tokens_per_s", "output tokens/s", COLOURS["tokens"])],
        ),
        Panel(
            "TTFT p95 (solid), p50 (dotted)",
            "ms",
            ttft,
            view.thresholds("ttft_p95", "ttft_p50"),
            log_y=wide(view.column("ttft_p95_ms") + view.column("ttft_p50_ms")),
        ),
    ]
    if any(v is not None for v in view.column("tpot_p95_ms")):
        panels.append(
            Panel(
                "TPOT p95",
                "ms",
                [view.series(x, "tpot_p95_ms", "TPOT p95", COLOURS["tpot"])],
                view.thresholds("tpot_p95"),
                log_y=wide(view.column("tpot_p95_ms")),
            )
        )
    panels.append(
        Panel(
            "e2e p95",
            "ms",
            [view.series(x, "e2e_p95_ms", "e2e p95", COLOURS["e2e"])],
            view.thresholds("e2e_p95"),
            log_y=wide(view.column("e2e_p95_ms")),
        )
    )
    errors = view.series(x, "error_rate", "error rate", "crimson", scale=100.0)
    panels.append(Panel("Error rate", "% of requests", [errors]))
    if "gpu_util_mean_pct" in view.points.columns and any(v is not None for v in view.column("gpu_util_mean_pct")):
        gpu = view.series(x, "gpu_util_mean_pct", "GPU utilisation (mean)", "#2f855a")
        panels.append(Panel("GPU utilisation (NVML, steady window)", "%", [gpu]))
    return panels


def load_figure(view: SweepView) -> Chart:
    """load_panels on one shared load axis, the saturation point and SLO capacity marked; linear y axes from 0."""
    return stacked_panels(
        load_panels(view), view.x_title(), markers=view.markers(), log_x=view.log_x(), y_from_zero=True
    )


def latency_against_throughput(view: SweepView, throughput: str, x_title: str) -> Chart:
    """TTFT p95 and e2e p95 against the curve's `throughput` column, points in order of load."""
    x = view.column(throughput)
    panel = Panel(
        f"Latency against {x_title}",
        "ms",
        [
            view.series(x, "ttft_p95_ms", "TTFT p95", COLOURS["ttft"]),
            view.series(x, "e2e_p95_ms", "e2e p95", COLOURS["e2e"]),
        ],
        view.thresholds("ttft_p95", "e2e_p95"),
        log_y=wide(view.column("ttft_p95_ms") + view.column("e2e_p95_ms")),
    )
    return line_chart(panel, x_title, hovermode="closest")


def curve_table(view: SweepView) -> SummaryTable:
    """The curve itself, one row per load point in the order measured, with its run directory."""
    saturated_point = view.saturation.point if view.saturation else None
    rows = []
    for p in view.points.sort("point").iter_rows(named=True):
        level = p[view.level]
        marks = []
        if p["point"] == saturated_point:
            marks.append("saturation")
        elif p["saturation"]:
            marks.append(f"saturated: {p['saturation']}")
        if p["repeat_of"] is not None:
            marks.append(f"repeat of {p['repeat_of']}")
        if p["outlier"]:
            marks.append("outlier")
        if view.capacity is not None and level is not None and p["slo_met"] and float(level) == float(view.capacity):
            marks.append("SLO capacity")
        rows.append(
            [
                str(p["point"]),
                p["phase"],
                view.level_text(level),
                str(p["requests"]),
                number(p["achieved_rps"], 2),
                number(p["output_tokens_per_s"], 0),
                number(p["ttft_p50_ms"], 1),
                number(p["ttft_p95_ms"], 1),
                number(p["tpot_p95_ms"], 2),
                number(p["e2e_p95_ms"], 1),
                NO_VALUE if p["error_rate"] is None else f"{p['error_rate']:.1%}",
                {True: "met", False: "missed", None: NO_VALUE}[p["slo_met"]],
                ", ".join(marks),
                p["run_dir"],
            ]
        )
    columns = [
        "Point",
        "Phase",
        "Load",
        "Requests",
        "Req/s",
        "Tok/s",
        "TTFT p50",
        "TTFT p95",
        "TPOT p95",
        "e2e p95",
        "Errors",
        "SLO",
        "Marks",
        "Run directory",
    ]
    numeric = frozenset(columns[:1] + columns[2:11])
    return SummaryTable(
        f"The curve ({CURVE_NAME})",
        columns,
        rows,
        numeric,
        note=(
            "Latencies in ms. Each row's figures were computed from its run directory (relative to the sweep "
            "directory) by analysis/summary/run_summary.py over the point's steady window; `shadowreplay report` on "
            "that directory recomputes them and draws the point's own report."
        ),
    )


def _outcome_texts(view: SweepView) -> list[Text]:
    """What the sweep found, in words: saturation, SLO capacity, SLOs the curve does not hold."""
    texts = []
    if view.saturation is not None:
        texts.append(
            Text(
                f"Saturation at point {view.saturation.point} ({view.level_text(view.saturation.level)})"
                + (
                    f", confirmed by point {view.saturation.confirmed_by}"
                    if view.saturation.confirmed_by is not None
                    else ""
                )
                + f": {view.saturation.reason}."
            )
        )
    elif view.points.height:
        top = max(view.levels())
        texts.append(Text(f"No saturation up to {view.level_text(top)}: the sweep did not reach the server's limit."))
    for repeat in view.summary.repeats:
        texts.append(Text(f"{repeat.text}.", tone="warning" if repeat.verdict == "outlier" else "plain"))
    if view.slos:
        if view.capacity is not None:
            met = ", ".join(map(str, view.slos))
            texts.append(Text(f"SLO capacity: {view.level_text(view.capacity)} (every SLO met: {met})."))
        else:
            texts.append(Text("SLO capacity: none; no load point met every SLO.", tone="warning"))
        off_curve = [str(slo) for slo in view.slos if slo.name not in SLO_CURVE_COLUMNS]
        if off_curve:
            texts.append(
                Text(
                    f"SLOs judged from each point's own summary but not drawn (the curve holds no such percentile): "
                    f"{', '.join(off_curve)}."
                )
            )
    return texts


def _subtitle(summary: SweepSummary, sweep_dir: str, points: int) -> str:
    parts = [
        sweep_dir,
        f"target {summary.target}",
        f"{summary.shape} load, {points} point{'s' if points != 1 else ''} of {summary.duration_s:g} s",
    ]
    if summary.slos:
        parts.append(f"SLOs: {summary.slos}")
    return " · ".join(parts)


def build_sweep_page(summary: SweepSummary, curve: pl.DataFrame, sweep_dir: str | Path) -> ReportPage:
    """The sweep report's page from the sweep's summary.json and its curve.parquet rows."""
    view = SweepView(summary, curve)
    page = ReportPage(
        f"shadowreplay sweep of {summary.target}",
        _subtitle(summary, str(sweep_dir), curve.height),
        installed_version(),
    )
    against_load = page.section("Against load")
    for text in _outcome_texts(view):
        against_load.add(text)
    if not curve.height:
        against_load.add(Text("The curve has no load point: nothing to draw.", tone="warning"))
    else:
        against_load.add(
            Figure(
                f"Throughput, latency and errors against {view.x_title()}",
                load_figure(view),
                "Each marker is one load point (hover: its index, phase and run directory); dashed red lines are "
                "SLO thresholds; vertical lines mark the saturation point and the SLO capacity.",
            )
        )
        trade_off = page.section("Throughput against latency")
        trade_off.add(
            Figure(
                "TTFT p95 and e2e p95 against output tokens/s",
                latency_against_throughput(view, "output_tokens_per_s", "output tokens/s"),
                "Points joined in order of rising load: where the line turns up, more load buys latency, "
                "not throughput.",
            )
        )
        trade_off.add(
            Figure(
                "TTFT p95 and e2e p95 against achieved requests/s",
                latency_against_throughput(view, "achieved_rps", "achieved requests/s"),
            )
        )
    table = page.section("Load points")
    table.add(curve_table(view))
    table.add(
        Definitions(
            "How every figure is computed",
            {**CURVE_DEFINITIONS, **{f"summary: {k}": v for k, v in SUMMARY_DEFINITIONS.items()}},
        )
    )
    return page


def write_sweep_report(sweep_dir: str | Path) -> Path:
    """Write SWEEP_DIR/report.html from SWEEP_DIR/summary.json and SWEEP_DIR/curve.parquet; returns its path."""
    directory = Path(sweep_dir)
    summary, curve = read_sweep(directory)
    return build_sweep_page(summary, curve, directory).write(SweepDir(directory).report_path)
