"""RUN_DIR/report.html: a run's load, latency, GPU and server telemetry, tables and cost in one offline page.

Contents, top to bottom:
- Incomplete run (only when it is: replay/schemas/run_completeness.py): what is missing, how to resume.
- Over time (one shared time axis, run seconds, the steady window shaded): offered request rate
  (scheduled sends) and completions and errors per target; TTFT p50 and p95 per target by send
  time; when telemetry exists, GPU utilisation and power per GPU (NVML) and vLLM's KV-cache usage
  and running/waiting requests per target (Prometheus).
- Latency distributions per target: TTFT, ITL, TPOT and e2e as percentile curves.
- The summary's tables (analysis/summary/tables.py), with the cost and GPU tables when present,
  and the definitions behind every figure.
Time series are binned (`time_bin_s`: about 60 bins across the run) and distributions drawn at
fixed percentiles, so the page's size does not grow with the number of requests or samples.
Every statistic is computed by analysis/metrics/table.py; this module only bins, draws and lays out.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import polars as pl

from shadowreplay.analysis.data.run_data import RunData
from shadowreplay.analysis.data.telemetry_data import VLLM_KV_CACHE_USAGE, VLLM_RUNNING, VLLM_WAITING, Telemetry
from shadowreplay.analysis.metrics import table as metrics
from shadowreplay.analysis.report.charts import Band, ColourMap, Panel, Series, quantile_grid, stacked_panels
from shadowreplay.analysis.report.page import Definitions, Figure, ReportPage, Text
from shadowreplay.analysis.summary.models import RunSummary, TtftTimeline
from shadowreplay.analysis.summary.run_summary import Curves, SendTimeBins
from shadowreplay.analysis.summary.tables import summary_tables
from shadowreplay.replay.schemas.run_dir import RunDir
from shadowreplay.replay.schemas.telemetry import (
    NVML_GPU_LOST,
    NVML_GPU_UTIL,
    NVML_POWER,
    SOURCE_NVML,
    SOURCE_PROMETHEUS,
)

UUID_HEAD = 12  # `GPU-` and the first 8 hex digits of a GPU's UUID: enough to tell a node's GPUs apart

SeriesLabel = Callable[[str, str], str]
"""Names a telemetry series from its (host, device); both are non-null (telemetry_data rejects nulls)."""
TARGET_BINS = 60
NICE_BIN_STEPS_S = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
DISTRIBUTION_PERCENTILES = (
    *(float(p) for p in range(0, 90)),
    *(90 + 0.5 * i for i in range(18)),
    99.5,
    99.9,
    100.0,
)
DISTRIBUTION_METRICS = ("ttft", "itl", "tpot", "e2e")
DISTRIBUTION_LABELS = {"ttft": "TTFT", "itl": "ITL", "tpot": "TPOT", "e2e": "e2e"}
DISTRIBUTION_CURVES = Curves(DISTRIBUTION_METRICS, DISTRIBUTION_PERCENTILES)
"""What `summarize` is asked to keep for this page (`report` asks), so each population is sorted once."""


def time_bin_s(span_s: float) -> float:
    """The smallest step of NICE_BIN_STEPS_S that cuts `span_s` into at most TARGET_BINS bins."""
    return next((step for step in NICE_BIN_STEPS_S if span_s / step <= TARGET_BINS), NICE_BIN_STEPS_S[-1])


SEND_TIME_BINS = SendTimeBins(time_bin_s, (50.0, 95.0))
"""The TTFT by send time `summarize` is asked to keep for this page (`report` asks), from the rows it reads."""


def _series(frame: pl.DataFrame, name: str, value: str, bin_s: float, **style: Any) -> Series:
    """A line through the bins' centres."""
    ordered = frame.sort("bin")
    centres = (ordered.get_column("bin") * bin_s + bin_s / 2).to_list()
    return Series(name, centres, ordered.get_column(value).to_list(), **style)


def _on_grid(binned: pl.DataFrame, grid: pl.DataFrame, fill: float | None) -> pl.DataFrame:
    """`binned` on every bin of `grid`: an empty bin is `fill` (0 for a count, None, a gap, for a statistic)."""
    joined = grid.join(binned, on="bin", how="left")
    return joined if fill is None else joined.fill_null(fill)


def _ttft_by_bin(rows: pl.LazyFrame, bin_s: float) -> pl.DataFrame:
    """TTFT p50 and p95 (metrics.latency_values("ttft")) of `rows` by the bin of their send, from the rows: one
    collect of the bins and values (metrics.binned_percentiles)."""
    values = (
        rows.filter(pl.col("sent_s").is_not_null())
        .select(metrics.time_bin("sent_s", bin_s), metrics.population_values("ttft").alias("value"))
        .drop_nulls("value")
        .collect(engine="streaming")
    )
    bins, (p50, p95) = metrics.binned_percentiles(
        values.get_column("bin").to_numpy(), values.get_column("value").to_numpy(), (50.0, 95.0)
    )
    return _timeline_frame({"bin": bins.tolist(), "p50": p50, "p95": p95})


def _timeline_frame(timeline: dict[str, list[float]]) -> pl.DataFrame:
    """A target's TTFT by send time (TtftTimeline.targets' entry, or _ttft_by_bin's) as a frame on bins."""
    return pl.DataFrame(
        {"bin": [int(b) for b in timeline["bin"]], "p50": timeline["p50"], "p95": timeline["p95"]},
        schema={"bin": pl.Int64, "p50": pl.Float64, "p95": pl.Float64},
    )


def load_panels(
    final_rows: pl.LazyFrame,
    targets: list[str],
    bin_s: float,
    colours: ColourMap,
    timeline: TtftTimeline | None = None,
) -> list[Panel]:
    """Request rate (offered, completed, errors) and TTFT p50/p95 over time, binned by `bin_s`.

    Rates are drawn on every bin from the first scheduled send to the last request done, so a stall
    shows as zero; a bin without a TTFT is a gap in its line. All targets share one schedule, so each
    request is drawn once in the offered line: a bin's offered count is the largest of the targets' counts
    of final rows scheduled in it (the same count for every target in a complete run; in an interrupted
    one, a request no target finished is not drawn, as it has no row). Each figure is one grouped pass
    over the columns it reads (by target and bin), never a copy of a target's rows. The TTFT lines are the
    summary's `timeline` where it has them (bins `bin_s` wide), else computed from the rows.
    """
    scheduled, done_by_target = pl.collect_all(  # run together, each reading its own columns
        [
            final_rows.filter(pl.col("scheduled_s").is_not_null())
            .group_by("target", metrics.time_bin("scheduled_s", bin_s))
            .agg(pl.len().alias("scheduled")),
            final_rows.filter(pl.col("done_s").is_not_null())
            .group_by("target", metrics.time_bin("done_s", bin_s))
            .agg(
                (metrics.is_ok().sum() / bin_s).alias("completed"), (metrics.is_error().sum() / bin_s).alias("errors")
            ),
        ],
        engine="streaming",
        optimizations=pl.QueryOptFlags(comm_subplan_elim=False),
    )
    first = cast("int | None", scheduled.get_column("bin").min())  # Int64 columns
    ends = [cast("int | None", frame.get_column("bin").max()) for frame in (scheduled, done_by_target)]
    last = max((end for end in ends if end is not None), default=first)
    bins = range(first, cast(int, last) + 1) if first is not None else range(0)
    grid = pl.DataFrame({"bin": bins}, schema={"bin": pl.Int64})
    offered = _on_grid(scheduled.group_by("bin").agg((pl.col("scheduled").max() / bin_s).alias("rate")), grid, 0.0)
    rate_series = [_series(offered, "offered (scheduled)", "rate", bin_s, colour="#52606d", dash="dot")]
    ttft_series = []
    for target in targets:
        of_target = pl.col("target") == target
        done = _on_grid(done_by_target.filter(of_target).drop("target"), grid, 0.0)
        rate_series.append(_series(done, target, "completed", bin_s, colour=colours(target)))
        if done.get_column("errors").sum() > 0:
            rate_series.append(
                _series(
                    done, f"{target} errors", "errors", bin_s, colour=colours(target), dash="dash", mode="lines+markers"
                )
            )
        kept = timeline.targets.get(target) if timeline is not None else None
        by_bin = _timeline_frame(kept) if kept is not None else _ttft_by_bin(final_rows.filter(of_target), bin_s)
        ttft = _on_grid(by_bin, grid, None)
        ttft_series.append(_series(ttft, target, "p95", bin_s, colour=colours(target)))
        ttft_series.append(_series(ttft, f"{target} p50", "p50", bin_s, colour=colours(target), dash="dot"))
    return [
        Panel(f"Request rate (per {bin_s:g} s bin)", "requests/s", rate_series),
        Panel("TTFT by send time: p95 (solid), p50 (dotted)", "ms", ttft_series),
    ]


def _telemetry_series(
    samples: pl.DataFrame,
    metric: str | tuple[str, ...],
    bin_s: float,
    label: SeriesLabel,
    colours: ColourMap,
    scale: float = 1.0,
    **style: Any,
) -> list[Series]:
    """One line per (host, device): the bins' mean of `metric` (the first name of a tuple that has samples) x scale."""
    names = (metric,) if isinstance(metric, str) else metric
    chosen = next((name for name in names if (samples.get_column("metric") == name).any()), None)
    if chosen is None:
        return []
    binned = (
        samples.filter(pl.col("metric") == chosen)
        .group_by("host", "device", metrics.time_bin("t_s", bin_s))
        .agg((pl.col("value").mean() * scale).alias("value"))
    )
    series = []
    for (host, device), rows in sorted(binned.group_by("host", "device"), key=lambda item: str(item[0])):
        name = label(host, device)
        series.append(_series(rows, name, "value", bin_s, colour=colours(name), **style))
    return series


def telemetry_panels(telemetry: Telemetry | None, bin_s: float, colours: ColourMap) -> list[Panel]:
    """GPU utilisation and power per GPU, KV-cache usage and the server's queue per target; only those with data."""
    if telemetry is None:
        return []
    panels = []
    nvml = telemetry.source(SOURCE_NVML)
    if nvml.height:
        hosts = nvml.get_column("host").n_unique()
        identities = nvml.group_by("host", "device").agg(
            pl.col("gpu_uuid").drop_nulls().first().alias("uuid"),
            pl.col("t_s").filter(pl.col("metric") == NVML_GPU_LOST).min().alias("lost_at_s"),
        )
        known = {(host, device): (uuid, lost) for host, device, uuid, lost in identities.iter_rows()}

        def gpu_label(host: str, device: str) -> str:
            """`GPU 3 GPU-2b7c2c4e` (its index and the head of its UUID), `(lost at 123 s)` where it fell off."""
            uuid, lost = known.get((host, device), (None, None))
            name = f"GPU {host}:{device}" if hosts > 1 else f"GPU {device}"
            name += f" {uuid[:UUID_HEAD]}" if uuid else ""
            return name + (f" (lost at {lost:.1f} s)" if lost is not None else "")

        util = _telemetry_series(nvml, NVML_GPU_UTIL, bin_s, gpu_label, colours)
        power = _telemetry_series(nvml, NVML_POWER, bin_s, gpu_label, colours)
        if util:
            panels.append(Panel("GPU utilisation (NVML)", "%", util))
        if power:
            panels.append(Panel("GPU power (NVML)", "W", power))
    server = telemetry.source(SOURCE_PROMETHEUS)
    if server.height:
        kv = _telemetry_series(server, VLLM_KV_CACHE_USAGE, bin_s, lambda _, device: device, colours, scale=100.0)
        if kv:
            panels.append(Panel("KV-cache usage (vLLM /metrics)", "%", kv))
        queue = _telemetry_series(server, VLLM_RUNNING, bin_s, lambda _, device: f"{device} running", colours)
        queue += _telemetry_series(
            server, VLLM_WAITING, bin_s, lambda _, device: f"{device} waiting", colours, dash="dot"
        )
        if queue:
            panels.append(Panel("Requests in the server (vLLM /metrics)", "requests", queue))
    return panels


def _populations(final_rows: pl.LazyFrame, target: str) -> dict[str, pl.Series]:
    """One target's population of each of DISTRIBUTION_METRICS (metrics.latency_values), read in two passes
    over the columns they need: the per-row metrics together, the ITL gaps with one explode."""
    rows = final_rows.filter(pl.col("target") == target)
    per_row = [name for name in DISTRIBUTION_METRICS if not metrics.METRIC_BY_NAME[name].per_gap]
    values = rows.select(metrics.population_values(name) for name in per_row).collect()
    populations = {name: values.get_column(name).drop_nulls() for name in per_row}
    for name in DISTRIBUTION_METRICS:
        if name not in populations:
            token_times = rows.filter(metrics.is_ok()).select("token_times_ms").collect().to_series()
            populations[name] = metrics.gaps_of_collected(token_times)  # latency_values(name)
    return populations


def distribution_panels(
    final_rows: pl.LazyFrame,
    targets: list[str],
    colours: ColourMap,
    computed: dict[str, dict[str, list[float]]] | None = None,
) -> list[Panel]:
    """Percentile curves of TTFT, ITL, TPOT and e2e per target (metrics.latency_values populations): those the
    summary `computed` (RunSummary.distributions, summarize with DISTRIBUTION_CURVES), else each one call
    (metrics.percentiles_of) over its population."""
    curves: dict[str, list[Series]] = {name: [] for name in DISTRIBUTION_METRICS}
    for target in targets:
        drawn = (computed or {}).get(target, {})
        if any(name not in drawn for name in DISTRIBUTION_METRICS):
            drawn = {
                name: metrics.percentiles_of(values.to_numpy(), DISTRIBUTION_PERCENTILES)
                for name, values in _populations(final_rows, target).items()
            }
        for name in DISTRIBUTION_METRICS:
            if drawn[name]:
                curves[name].append(Series(target, drawn[name], DISTRIBUTION_PERCENTILES, colour=colours(target)))
    return [Panel(DISTRIBUTION_LABELS[name], "ms", curves[name]) for name in DISTRIBUTION_METRICS]


def _subtitle(summary: RunSummary) -> str:
    source, window = summary.source, summary.window
    targets = len(summary.targets)
    text = (
        f"{summary.run_dir} · {targets} target{'s' if targets != 1 else ''}, {source.final_rows} final rows "
        f"({source.rows} attempts) · {window.kind} window {window.start_s:.2f}–{window.end_s:.2f} s"
    )
    if summary.slos:
        text += " · SLOs: " + ", ".join(summary.slos)
    return text


def build_run_page(summary: RunSummary, run: RunData, telemetry: Telemetry | None) -> ReportPage:
    """The run report's page from its summary (analysis/summary/run_summary.py), result rows and telemetry."""
    page = ReportPage(f"shadowreplay run {summary.run_id or '?'}", _subtitle(summary), summary.shadowreplay_version)
    final = run.final_scan
    window = summary.window
    colours = ColourMap()
    for target in summary.targets:
        colours(target)
    if summary.timeline is not None:
        bin_s = summary.timeline.bin_s
    else:
        end = (
            final.select(pl.max_horizontal(pl.col("done_s").max(), pl.col("scheduled_s").max()))
            .collect(engine="streaming")
            .item()
        )
        bin_s = time_bin_s(max((end or window.schedule_start_s) - window.schedule_start_s, 0.0))

    incomplete = summary.incomplete_lines()
    if incomplete:  # first, before any figure: what the page is drawn from is not the whole run
        warning = page.section("Incomplete run")
        for line in incomplete:
            warning.add(Text(line, tone="alert"))

    over_time = page.section("Over time")
    panels = load_panels(final, run.targets, bin_s, colours, summary.timeline) + telemetry_panels(
        telemetry, bin_s, colours
    )
    band = Band(window.start_s, window.end_s, f"{window.kind} window")
    over_time.add(
        Figure(
            "Load, latency and resources on one time axis (run seconds)",
            stacked_panels(panels, "run time (s)", [band]),
            "Shaded: the window throughput and energy are measured over. Rates and TTFT are per "
            f"{bin_s:g} s bin; telemetry is the bin's mean.",
        )
    )
    if telemetry is None:
        over_time.add(Text("No telemetry in this run (RUN_DIR/telemetry/): GPU and server panels are left out."))

    distributions = page.section("Latency distributions")
    distributions.add(
        Figure(
            "Percentile curves per target (log scale)",
            quantile_grid(distribution_panels(final, run.targets, colours, summary.distributions)),
            "Final ok requests (ITL: every gap between their tokens); y = percentile. The x axes are logarithmic, "
            "so zero values (e.g. tokens that arrived in one chunk) start a curve above 0.",
        )
    )

    tables = page.section("Summary tables")
    cost = summary.cost
    if cost.get("example_prices"):
        tables.add(Text("Costs use EXAMPLE prices from the price file, not a contract.", tone="warning"))
    for table in summary_tables(summary):
        tables.add(table)
    for label, part in (("Cost", cost), ("GPU telemetry", summary.gpu)):
        if part.get("status") == "absent":
            tables.add(Text(f"{label}: {part['reason']}."))
    definitions = {
        **summary.definitions,
        **cost.get("definitions", {}),
        **summary.gpu.get("definitions", {}),
    }
    tables.add(Definitions("How every figure is computed", definitions))
    return page


def write_run_report(run_dir: str | Path, summary: RunSummary, run: RunData, telemetry: Telemetry | None) -> Path:
    """Write RUN_DIR/report.html; returns its path."""
    return build_run_page(summary, run, telemetry).write(RunDir(run_dir).report_path)
