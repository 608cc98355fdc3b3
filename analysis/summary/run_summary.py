"""The summary of a run, per target and per tag: the object `report` prints and writes as summary.json.

Every figure comes from analysis/metrics/table.py over the run's Parquet rows and carries the counts it
was computed from. Keys (summary `schema_version` 1; new keys may be added, none renamed):

    kind                 "shadowreplay.summary"
    schema_version       1
    shadowreplay_version version of the code that wrote it
    run_dir, run_id      where the rows came from (run_id null if the shards carry none)
    source               results_files, rows (every attempt), final_rows,
                         requests_without_final_row (attempted, never finished: an interrupted run),
                         manifest (file name, or null when the run has none)
    definitions          percentile_method, populations, window rule, mismatch tolerance (text)
    window               kind ("steady" | "whole_run"), start_s, end_s, duration_s, warmup_s,
                         schedule_start_s, schedule_end_s (run seconds; see metrics.Window)
    slos                 the SLOs applied, canonical text (e.g. "ttft_p95=500ms")
    targets              {target name: {"all": STATS, "tags": [{"tag": name or null, **STATS}, ...],
                         "replicas": [{replica, requests, ok, errors, error_rate, ttft_p50_ms, ttft_p95_ms,
                         tpot_p95_ms, e2e_p95_ms}, ...]}}; "tags" is empty when no row has a tag,
                         "replicas" for a target of one replica (final rows with a `replica`, by index).
    cost                 {"status": "absent", "reason"} without a price file, else (analysis/cost/model.py):
                         status "computed", prices_file, currency, billing {failed_requests},
                         monthly_volume {basis (run_span | requests | tokens | traffic_log), per_month,
                         description, schedule_span_s}, example_prices (any entry used is an example),
                         definitions, targets {name: COST}
    gpu                  {"status": "absent", "reason"} without NVML telemetry, else (analysis/telemetry/energy.py):
                         status "measured", source, definitions, serving {devices, how}, resolution
                         {metric: what the driver's figure resolves}, and over the serving GPUs:
                         devices_count, gpu_util_pct {mean, p95}, mem_util_pct {mean, p95}, power_instant_w
                         {mean, p95},
                         mem_used_high_water_bytes, power_w {mean_per_gpu, mean_total}, energy {joules,
                         method (counter | power_integral | mixed), devices_measured, window_s, covered_s,
                         targets, output_tokens, joules_per_output_token, withheld}; all_sampled
                         {devices_count, gpu_util_pct, power_w_mean_total, energy_joules}, lost_devices,
                         devices [{host, device, gpu_uuid, pci_bus_id, lost_at_s, serving, samples,
                         gpu_util_pct, mem_util_pct, mem_used_high_water_bytes, mem_total_bytes,
                         power_w {mean, p95}, energy_j, energy_method, energy_covered_s}]
    server_histograms    {"status": "absent", "reason"} without scraped vLLM histograms, else
                         (analysis/telemetry/server_histograms.py): status "compared", definitions, quantiles,
                         targets {name: {scrapes {first_send_s, baseline_t_s, end_t_s, baseline
                         (before_first_send | after_first_send)}, metrics {ttft, itl: {status
                         (compared | absent | counter_reset), vllm_family, counts {vllm, ours, ours_ok_total,
                         ours_outside_scrape_span, vllm_minus_ours, equal}, mean_ms {vllm, ours,
                         ours_minus_vllm}, higher (by mean: ours | vllm | equal), tolerance_ms,
                         multi_token_reads (itl: {zero_gaps, gaps, share, limit}; ttft: null), comparable,
                         quantiles [{quantile, q, vllm_bucket_ms [lower, upper], vllm_estimate_ms, ours_ms,
                         ours_bucket_ms, beyond_bucket_ms, bucket_offset, higher (by bucket: ours | vllm |
                         same_bucket), agree (null: not comparable)}], agree,
                         buckets [{le_ms (null: +Inf), vllm, ours}] (cumulative)}}}},
                         targets_not_scraped, disagreements, count_differences, not_comparable (one line each)
    load_warnings        [{check, target, figure, value, limit, message}]: where the load was not offered as
                         recorded (analysis/summary/load_fidelity.py: send lateness p99 above 10 ms, most ITL
                         gaps exactly 0 ms while vLLM's ITL is not); empty when the client kept up
    completeness         whether the run is whole (replay/schemas/run_completeness.py RunCompleteness):
                         manifest (present | missing | unreadable), manifest_status, manifest_unreadable,
                         run_error, driver_finished, planned_pairs, planned_from (manifest | plan |
                         estimate), final_rows, final_pairs, final_rows_by_status, missing_pairs,
                         duplicate_finals, attempted_without_final, torn_shards [{name, reason}],
                         resumable_pairs, resume_command, not_resumable, complete, lines (what `report`
                         prints first; empty for a complete run); null where not checked (sweep points)

STATS (one slice: a target, or a target and tag):
    requests             final rows (one per scheduled request)
    ok, errors           final rows with status ok / any other status
    error_rate           errors / requests (null with no requests)
    errors_by_status     {status: final rows} for every non-ok status of shadowreplay.replay.schemas.results.STATUSES
    http_statuses        {"200": n, "429": n, ...} final rows by HTTP status (rows without one left out)
    attempts, retries    every row (attempt) / rows that were not final
    latency_ms           {metric: {count, mean, p50, p90, p95, p99, max}} for ttft, itl, tpot, e2e,
                         sched_ttft, sched_e2e, lateness (populations: definitions.populations)
    multi_token_reads    {zero_gaps, gaps, share}: the slice's ITL gaps (over final ok rows) that are exactly 0 ms,
                         tokens read together (share null with no gaps)
    output_tokens        {total, from_server, from_client}: over final ok rows; from_client counts
                         rows with no server usage, whose client count was used
    token_mismatch       {compared (final ok rows with both counts), mismatched}
    window               {completed (final ok rows done in the window), output_tokens (theirs),
                         good (of those, meeting every SLO)}
    throughput           {requests_per_s, output_tokens_per_s, goodput_rps}: window counts / duration_s
                         (goodput_rps null when no SLO is given)
    slo                  [{slo, metric, percentile, threshold_ms, value_ms (the slice's percentile),
                         met (value_ms <= threshold_ms; null with no data), over_ms (value_ms -
                         threshold_ms: > 0 missed by that much, <= 0 the headroom; null with no data),
                         requests_meeting (final ok rows meeting it on their own value), requests_checked}]
    slos_met             every SLO met at the percentile level (null with no SLOs or no data)
    output_lengths       {clamped, raised (final rows with those flags), exact_checked (final ok rows that
                         asked for an exact output length, with server usage), short (of those, fewer
                         completion_tokens than expected_completion_tokens: the output shortfall),
                         expected_tokens, tokens_short (expected - completion over the short rows)}

COST (one target; money in USD, null where the target has no price):
    price, matched_by    the price entry (`provider/model` or `self_hosted/name`) and the rule that chose it
    no_price_reason      why there is none (null when priced)
    billed               {requests, input_tokens, cached_input_tokens, output_tokens} of the run
    input_tokens_from_sent_length  billed rows without server prompt_tokens
    kind                 "tokens" (hosted) | "self_hosted"; as_of, example: the entry's date and example flag
    run_duration_s, usd_per_hour   self-hosted only
    run_cost_usd, cost_per_mtok_output_usd, cost_per_mtok_total_usd
    monthly              {usage {requests, input_tokens, cached_input_tokens, output_tokens}, cost_usd, reason
                         (why no projection); self-hosted also capacity_output_tokens_per_s, capacity_from,
                         deployments}
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from shadowreplay import installed_version
from shadowreplay.analysis.cost.model import RUN_SPAN, MonthlyVolume, cost_summary
from shadowreplay.analysis.cost.prices import PriceBook
from shadowreplay.analysis.data.run_data import READ_THREADS, RunData
from shadowreplay.analysis.data.telemetry_data import Telemetry
from shadowreplay.analysis.metrics import table as metrics
from shadowreplay.analysis.metrics.slo import Slo
from shadowreplay.analysis.summary.load_fidelity import CHECKS, LoadCheck, load_warnings
from shadowreplay.analysis.summary.models import RunSummary, TtftTimeline
from shadowreplay.analysis.telemetry.energy import gpu_summary
from shadowreplay.analysis.telemetry.server_histograms import server_histogram_summary
from shadowreplay.replay.schemas.results import STATUSES
from shadowreplay.replay.schemas.run_completeness import RunCompleteness
from shadowreplay.replay.schemas.run_dir import MANIFEST_NAME, RunDir, write_text_atomically

SUMMARY_KIND = "shadowreplay.summary"
SUMMARY_SCHEMA_VERSION = 1
ERROR_STATUSES = tuple(status for status in STATUSES if status != "ok")
PERCENTILE_KEYS = tuple(metrics.percentile_key(p) for p in metrics.REPORTED_PERCENTILES)
STAT_KEYS = ("count", "mean", *PERCENTILE_KEYS, "max")

DEFINITIONS = {
    "percentile_method": (
        "linear interpolation between the nearest ranks (numpy 'linear', Hyndman-Fan type 7); nulls ignored"
    ),
    "populations": (
        "latency metrics over final rows with status ok (ITL: all their gaps); lateness over final rows "
        "that were sent; errors over final rows; non-final rows (retried attempts) count only in attempts/retries"
    ),
    "window": (
        "steady: [first scheduled send + warm-up, last scheduled send], warm-up "
        f"{metrics.DEFAULT_WARMUP_FRACTION:.0%} of the schedule span "
        "unless given; whole_run: [first scheduled send, last done] when the steady window is empty; "
        "a request counts when done_s is inside"
    ),
    "token_mismatch": (
        f"|server - client| / server > {metrics.MISMATCH_TOLERANCE:.0%}; client = the client's own count, never "
        "the usage: one per token event where the server streams one token each (empty-text events too), the "
        "tokenizer's count of each chunk's text where chunks carry several (a replacement character counts one)"
    ),
    "slo_per_request": (
        "a request meets an SLO when its own value is within the threshold (ITL: the SLO's percentile of its "
        "own gaps); a missing TPOT/ITL (fewer than 2 tokens) meets it, a missing TTFT/e2e does not"
    ),
}


ROW_METRICS = tuple(metric.name for metric in metrics.METRICS if not metric.per_gap)
"""The latency metrics with one value per row (metrics.population_values)."""
OK_ROW_METRICS = tuple(metric.name for metric in metrics.METRICS if metric.population == "final ok rows")
"""Those whose population is the final ok rows (the rest, lateness: every final row that was sent)."""


def _slice_aggregations(window: metrics.Window, slos: Sequence[Slo]) -> list[pl.Expr]:
    """The counts and sums over the final rows of one slice, flat-named `a.b.c` (nested by `_nest`); the latency
    statistics are `_latency_stats`."""
    exprs: list[pl.Expr] = [
        pl.len().alias("requests"),
        metrics.is_ok().sum().alias("ok"),
        metrics.is_error().sum().alias("errors"),
        metrics.error_rate().alias("error_rate"),
    ]
    exprs += [(pl.col("status") == status).sum().alias(f"errors_by_status.{status}") for status in ERROR_STATUSES]
    ok_tokens = metrics.output_tokens().filter(metrics.is_ok())
    exprs += [
        ok_tokens.sum().alias("output_tokens.total"),
        (metrics.is_ok() & pl.col("completion_tokens").is_not_null()).sum().alias("output_tokens.from_server"),
        (metrics.is_ok() & pl.col("completion_tokens").is_null() & pl.col("client_tokens").is_not_null())
        .sum()
        .alias("output_tokens.from_client"),
        metrics.token_mismatch().filter(metrics.is_ok()).is_not_null().sum().alias("token_mismatch.compared"),
        metrics.token_mismatch().filter(metrics.is_ok()).sum().alias("token_mismatch.mismatched"),
        metrics.completed_in_window(window).sum().alias("window.completed"),
        metrics.output_tokens().filter(metrics.completed_in_window(window)).sum().alias("window.output_tokens"),
        (metrics.completed_in_window(window) & metrics.meets_all_slos(slos)).sum().alias("window.good"),
        metrics.requests_per_s(window).alias("throughput.requests_per_s"),
        metrics.output_tokens_per_s(window).alias("throughput.output_tokens_per_s"),
        (metrics.goodput_rps(window, slos) if slos else pl.lit(None, dtype=pl.Float64)).alias("throughput.goodput_rps"),
    ]
    expected, served = pl.col("expected_completion_tokens"), pl.col("completion_tokens")
    exact = metrics.is_ok() & expected.is_not_null() & served.is_not_null()
    short = exact & (served < expected)
    exprs += [
        pl.col("clamped").fill_null(False).sum().alias("output_lengths.clamped"),
        pl.col("raised").fill_null(False).sum().alias("output_lengths.raised"),
        exact.sum().alias("output_lengths.exact_checked"),
        short.sum().alias("output_lengths.short"),
        expected.filter(exact).sum().alias("output_lengths.expected_tokens"),
        (expected - served).filter(short).sum().alias("output_lengths.tokens_short"),
    ]
    for index, slo in enumerate(slos):
        meets = metrics.meets_slo(slo).filter(metrics.is_ok())
        exprs += [
            meets.sum().alias(f"slo.{index}.requests_meeting"),
            metrics.is_ok().sum().alias(f"slo.{index}.requests_checked"),
        ]
    return exprs


@dataclass(frozen=True)
class Curves:
    """Percentile curves to keep per target (RunSummary.distributions): `metrics` at `percentiles`. Their
    populations are sorted once and every percentile, the summary's and the curve's, is read off them."""

    metrics: tuple[str, ...]
    percentiles: tuple[float, ...]


NO_CURVES = Curves((), ())


@dataclass(frozen=True)
class SendTimeBins:
    """TTFT percentiles by send time to keep per target (RunSummary.timeline): the final ok rows' TTFT grouped by
    the bin of their `sent_s`, bins `width(span_s)` wide, where span_s runs from the first scheduled send to
    the last request done or scheduled; taken from the same collected rows as the summary's TTFT."""

    width: Callable[[float], float]
    percentiles: tuple[float, ...]


def _row_populations(per_row: pl.DataFrame) -> dict[str, np.ndarray]:
    """The population (metrics.population_values, nulls dropped) of each per-row metric a collected frame holds,
    taken out of it: each column leaves the frame as its population is made, so the two are never both held."""
    return {name: per_row.drop_in_place(name).drop_nulls().to_numpy() for name in list(per_row.columns)}


def _population_figures(
    name: str, values: np.ndarray, slos: Sequence[Slo], curves: Curves = NO_CURVES
) -> tuple[dict[str, Any], list[float] | None]:
    """One latency metric's statistics over one slice's population, flat-named like `_slice_aggregations` (the
    SLOs' percentiles of that metric included), and its curve when `curves` asks for it (else None).

    All percentiles are taken in one call (metrics.population_stats); a population drawn as a curve is sorted
    once (in place where the array is the caller's own) and every percentile read off it."""
    asked = [slo.percentile for slo in slos if slo.metric == name]
    ps = sorted({*metrics.REPORTED_PERCENTILES, *asked})
    drawn = None
    if name in curves.metrics:
        if values.flags.writeable:
            values.sort()  # in place: ITL gaps are the run's largest population
        else:
            values = np.sort(values)  # a read-only view of polars' buffer
        drawn = metrics.percentiles_of(values, curves.percentiles, is_sorted=True)
    stats = metrics.population_stats(values, ps, is_sorted=name in curves.metrics)
    flat: dict[str, Any] = {
        f"latency_ms.{name}.count": stats.count,
        f"latency_ms.{name}.mean": stats.mean,
        f"latency_ms.{name}.max": stats.max,
    }
    for p, key in zip(metrics.REPORTED_PERCENTILES, PERCENTILE_KEYS):
        flat[f"latency_ms.{name}.{key}"] = stats.percentiles[p]
    for index, slo in enumerate(slos):
        if slo.metric == name:
            flat[f"slo.{index}.value_ms"] = stats.percentiles[slo.percentile]
    return flat, drawn


def _itl_slice_figures(
    gaps: np.ndarray, slos: Sequence[Slo], curves: Curves
) -> tuple[dict[str, Any], list[float] | None]:
    """One slice's ITL statistics and gaps read together (multi_token_reads) over its gaps, and its curve."""
    zero_gaps = metrics.read_together_count(gaps)
    flat, drawn = _population_figures("itl", gaps, slos, curves)
    flat["multi_token_reads.zero_gaps"] = zero_gaps
    flat["multi_token_reads.gaps"] = len(gaps)
    flat["multi_token_reads.share"] = zero_gaps / len(gaps) if len(gaps) else None
    return flat, drawn


def _itl_figures(
    target: str, chunks: dict[Slice, list[np.ndarray]], slos: Sequence[Slo], curves: Curves
) -> dict[Slice, tuple[dict[str, Any], list[float] | None]]:
    """`_itl_slice_figures` of each of one target's slices from its gap chunks (`_gap_chunks`; by (target, tag)
    where tags exist), the target's own slice with `curves`: each tag's gaps, then all of them, are joined
    into one array, their figures taken, and let go."""
    found: dict[Slice, tuple[dict[str, Any], list[float] | None]] = {}
    for key in [key for key in chunks if len(key) == 2] + [(target,)]:
        parts = [chunk for tag_key in chunks for chunk in chunks[tag_key]] if len(key) == 1 else chunks[key]
        gaps = np.concatenate(parts) if parts else np.empty(0)
        if len(key) == 1:
            chunks.clear()  # the joined gaps are all the target has: its chunks can go
        del parts
        found[key] = _itl_slice_figures(gaps, slos, curves if len(key) == 1 else NO_CURVES)
        del gaps
    return found


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _slice_stats(flat: dict[str, Any], attempts: int, http_statuses: dict[str, int], slos: Sequence[Slo]) -> dict:
    """One slice's STATS from its aggregation row, attempt count and HTTP status counts."""
    stats = _nest(flat)
    slo_rows = stats.pop("slo", {})
    results = []
    for index, slo in enumerate(slos):
        row = slo_rows[str(index)]
        value = row["value_ms"]
        results.append(
            {
                "slo": str(slo),
                "metric": slo.metric,
                "percentile": slo.percentile,
                "threshold_ms": slo.threshold_ms,
                "value_ms": value,
                "met": None if value is None else bool(value <= slo.threshold_ms),
                "over_ms": None if value is None else value - slo.threshold_ms,
                "requests_meeting": row["requests_meeting"],
                "requests_checked": row["requests_checked"],
            }
        )
    verdicts = [result["met"] for result in results]
    return {
        "requests": stats["requests"],
        "ok": stats["ok"],
        "errors": stats["errors"],
        "error_rate": stats["error_rate"],
        "errors_by_status": stats["errors_by_status"],
        "http_statuses": http_statuses,
        "attempts": attempts,
        "retries": attempts - stats["requests"],
        "latency_ms": {
            name: {key: stats["latency_ms"][name][key] for key in STAT_KEYS} for name in metrics.LATENCY_METRICS
        },
        "multi_token_reads": stats["multi_token_reads"],
        "output_tokens": stats["output_tokens"],
        "token_mismatch": stats["token_mismatch"],
        "window": stats["window"],
        "throughput": stats["throughput"],
        "slo": results,
        "slos_met": None if not verdicts or None in verdicts else all(verdicts),
        "output_lengths": stats["output_lengths"],
    }


Slice = tuple[Any, ...]
"""A slice's key: (target,) or (target, tag)."""


def _gap_chunks(run: RunData, keys: list[str]) -> dict[Slice, list[np.ndarray]]:
    """Every slice's ITL gaps (metrics.latency_values("itl"): the gaps of final ok rows) by the values of
    `keys` (["target"] or ["target", "tag"]), in one pass over the shards: a shard's token times are read
    once, their gaps taken on the flat buffer with each gap's slice code (metrics.gap_codes; a slice's code
    from the run's sorted targets and tags) and split by code (one pass over the shard's gaps per slice it
    holds), so only the gaps are held, never the run's token lists."""
    chunks: dict[Slice, list[np.ndarray]] = defaultdict(list)
    counted = (pl.col("final") & metrics.is_ok()).fill_null(False)
    targets, tags = list(run.target_names), list(run.tags)
    code = pl.col("target").cast(pl.Enum(targets)).to_physical().cast(pl.Int32)
    slices: list[Slice] = [(target,) for target in targets]
    if "tag" in keys:  # code = target x (tags + 1) + tag's index (tags: null)
        tag_code = pl.col("tag").cast(pl.Enum(tags)).to_physical().cast(pl.Int32).fill_null(len(tags))
        code = code * (len(tags) + 1) + tag_code
        slices = [(target, tag) for target in targets for tag in [*tags, None]]

    def query(shard: pl.LazyFrame) -> pl.LazyFrame:
        return shard.select(pl.when(counted).then(code).otherwise(-1).alias("_code"), "token_times_ms")

    for frame in run.each_shard(query):
        row_codes = frame.get_column("_code").to_numpy()
        differences, codes = metrics.gap_codes(frame.get_column("token_times_ms"), row_codes)
        del frame
        for index in np.unique(row_codes[row_codes >= 0]):
            chunks[slices[index]].append(differences[codes == index])
    return chunks


def _attempts(run: RunData, keys: list[str]) -> dict[Slice, int]:
    """Every row (attempt) per slice of `keys`; empty where every row is final (attempts = requests)."""
    if run.every_row_final:
        return {}
    counts = run.scan.group_by(keys).agg(pl.len()).collect(engine="streaming")
    return {tuple(row[:-1]): row[-1] for row in counts.iter_rows()}


@dataclass
class _TargetRows:
    """What one target's slices are computed from, collected: each slice's aggregation row, HTTP status counts
    and per-row latency populations (numpy arrays, ROW_METRICS). Slices: (target,) and, where tags exist, each
    (target, tag)."""

    flats: dict[Slice, dict[str, Any]]
    http: dict[Slice, dict[str, int]]
    populations: dict[Slice, dict[str, np.ndarray]]
    send_bins: tuple[np.ndarray, np.ndarray] | None = None  # (send bin, TTFT) of each final ok row with both


@dataclass
class _TargetSlices:
    stats: dict[Slice, dict]  # STATS of (target,) and, where tags exist, of each (target, tag)
    curves: dict[str, list[float]]  # the target's Curves, by metric
    timeline: dict[str, list[float]] | None = None  # {"bin": [...], "p50": [...], ...}: SendTimeBins


def _collect_target(
    run: RunData, target: str, window: metrics.Window, slos: Sequence[Slo], send_bin_s: float | None = None
) -> _TargetRows:
    """One target's slices' inputs from four queries over its final rows, collected together (each scan reads
    only the columns its query asks for): the counts and sums of `_slice_aggregations`, the HTTP statuses and
    the per-row latency metrics (of the ok rows; lateness of all), per tag grouped in the same queries."""
    rows = run.final_scan if len(run.target_names) == 1 else run.final_scan.filter(pl.col("target") == target)
    by_tag = ["tag"] if run.has_tags else []
    aggregations = _slice_aggregations(window, slos)
    queries = [
        rows.select(aggregations),
        rows.filter(pl.col("http_status").is_not_null()).group_by(*by_tag, "http_status").agg(pl.len()),
        rows.filter(metrics.is_ok()).select(
            *by_tag,
            *(metrics.population_values(name) for name in OK_ROW_METRICS),
            *([metrics.time_bin("sent_s", send_bin_s).alias("_send_bin")] if send_bin_s is not None else []),
        ),
        rows.select(*by_tag, *(metrics.population_values(name) for name in ROW_METRICS if name not in OK_ROW_METRICS)),
    ]
    if by_tag:
        queries.append(rows.group_by("tag").agg(aggregations))
    # Run together, each with its own scan: a scan shared by the queries (common subplan elimination) would
    # hold every column they read at once. The ok rows' metrics are read from the ok rows only, so their
    # populations have few nulls to drop (a column without any is not copied).
    totals, statuses, ok_rows, all_rows, *tagged = pl.collect_all(
        queries, engine="streaming", optimizations=pl.QueryOptFlags(comm_subplan_elim=False)
    )
    flats: dict[Slice, dict[str, Any]] = {(target,): totals.row(0, named=True)}
    for frame in tagged:
        for row in frame.iter_rows(named=True):
            flats[(target, row.pop("tag"))] = row
    http: dict[Slice, dict[str, int]] = defaultdict(dict)
    for entry in statuses.sort("http_status").iter_rows():
        *tag, status, count = entry
        http[(target,)][str(status)] = http[(target,)].get(str(status), 0) + count
        if by_tag:
            http[(target, *tag)][str(status)] = count
    send_bins = None
    if send_bin_s is not None:
        timed = ok_rows.select("_send_bin", "ttft").drop_nulls()
        send_bins = (timed.get_column("_send_bin").to_numpy(), timed.get_column("ttft").to_numpy())
        ok_rows = ok_rows.drop("_send_bin")
    populations: dict[Slice, dict[str, np.ndarray]] = defaultdict(dict)
    for frame in (ok_rows, all_rows):
        if by_tag:
            for (tag,), part in frame.partition_by("tag", as_dict=True, include_key=False).items():
                populations[(target, tag)].update(_row_populations(part))
        populations[(target,)].update(_row_populations(frame.drop(by_tag)))
    return _TargetRows(flats, http, dict(populations), send_bins)


def _target_figures(
    collected: _TargetRows,
    itl: Future[dict[Slice, tuple[dict[str, Any], list[float] | None]]],
    slos: Sequence[Slo],
    curves: Curves,
    attempts: dict[Slice, int],
    send_time_bins: SendTimeBins | None = None,
) -> _TargetSlices:
    """STATS of each of a target's slices from its collected rows and ITL figures (no I/O: numpy over the
    populations, which are let go as their figures are taken); the target's own slice keeps `curves`, and its
    TTFT by send time the percentiles of `send_time_bins`."""
    result = _TargetSlices({}, {})
    if collected.send_bins is not None and send_time_bins is not None:
        ps = send_time_bins.percentiles
        bins, found = metrics.binned_percentiles(*collected.send_bins, ps)
        result.timeline = {"bin": bins.tolist(), **{metrics.percentile_key(p): v for p, v in zip(ps, found)}}
        collected.send_bins = None
    itl_figures = itl.result()
    for key, flat in collected.flats.items():
        asked = curves if len(key) == 1 else NO_CURVES
        if key not in itl_figures:  # a slice without an ok row has no gap chunk
            itl_figures[key] = _itl_slice_figures(np.empty(0), slos, NO_CURVES)
        itl_flat, itl_curve = itl_figures[key]
        flat.update(itl_flat)
        if len(key) == 1 and itl_curve is not None:
            result.curves["itl"] = itl_curve
        populations = collected.populations.pop(key, {})
        for name in ROW_METRICS:  # a metric a slice has no row for (a tag without an ok row): no values
            latency, drawn = _population_figures(name, populations.pop(name, np.empty(0)), slos, asked)
            flat.update(latency)
            if len(key) == 1 and drawn is not None:
                result.curves[name] = drawn
        result.stats[key] = _slice_stats(flat, attempts.get(key, flat["requests"]), collected.http.get(key, {}), slos)
    return result


def _all_targets(
    run: RunData,
    window: metrics.Window,
    slos: Sequence[Slo],
    curves: Curves,
    send_time_bins: SendTimeBins | None = None,
    send_bin_s: float | None = None,
) -> dict[str, _TargetSlices]:
    """Every target's slices. The ITL gaps of every slice come from one pass over the shards (`_gap_chunks`);
    then a pool of READ_THREADS threads (polars and numpy each run a query or a sort on one core, and release
    the GIL) computes, in this order, each target's ITL figures (the largest sorts: its gaps are let go
    first), then reads each target's rows (`_collect_target`) and computes its remaining figures, target after
    target, so only about READ_THREADS targets' rows are held at once. A job only ever waits for a job
    submitted before it, which a first-in first-out pool has started already."""
    keys = ["target", "tag"] if run.has_tags else ["target"]
    gaps = _gap_chunks(run, keys)
    attempts = _attempts(run, ["target"]) | (_attempts(run, keys) if run.has_tags else {})
    with ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="summary") as pool:
        itl = {}
        for target in run.targets:
            own = {key: gaps.pop(key) for key in [key for key in gaps if key[0] == target]}
            itl[target] = pool.submit(_itl_figures, target, own, slos, curves)
            del own

        def figures(target: str, rows: Future[_TargetRows]) -> _TargetSlices:
            return _target_figures(rows.result(), itl.pop(target), slos, curves, attempts, send_time_bins)

        found = {}
        for target in run.targets:  # each target's figures right after its read: few targets' rows held at once
            rows = pool.submit(_collect_target, run, target, window, slos, send_bin_s)
            found[target] = pool.submit(figures, target, rows)
            del rows
        return {target: future.result() for target, future in found.items()}


def _replica_figures(final: pl.LazyFrame) -> dict[str, list[dict[str, Any]]]:
    """Per target, each replica's ReplicaStats (final rows with a replica; one grouped query)."""
    ok = metrics.is_ok()
    frame = (
        final.filter(pl.col("replica").is_not_null())
        .group_by("target", "replica")
        .agg(
            pl.len().alias("requests"),
            ok.sum().alias("ok"),
            metrics.is_error().sum().alias("errors"),
            *(
                metrics.percentile(metrics.population_values(name), p).alias(f"{name}_p{p}_ms")
                for name, p in (("ttft", 50), ("ttft", 95), ("tpot", 95), ("e2e", 95))
            ),
        )
        .sort("target", "replica")
        .collect(engine="streaming")
    )
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in frame.iter_rows(named=True):
        target = row.pop("target")
        row["error_rate"] = row["errors"] / row["requests"] if row["requests"] else None
        found[target].append(row)
    return found


def summarize(
    run: RunData,
    slos: Sequence[Slo] = (),
    warmup_s: float | None = None,
    warmup_fraction: float = metrics.DEFAULT_WARMUP_FRACTION,
    prices: PriceBook | None = None,
    monthly: MonthlyVolume = RUN_SPAN,
    telemetry: Telemetry | None = None,
    checks: Sequence[LoadCheck] = CHECKS,
    curves: Curves = NO_CURVES,
    send_time_bins: SendTimeBins | None = None,
    completeness: RunCompleteness | None = None,
) -> RunSummary:
    """The summary of a run (keys in this module's docstring), typed; raises metrics.WindowError.

    `completeness` (RunCompleteness.of the run directory, as `report` reads it) is kept, with the pairs
    attempted but without a final row counted from the rows.

    Without `prices` the cost block says absent; without `telemetry` (analysis/data/telemetry_data.py
    load_telemetry) the gpu and server_histograms blocks do. `checks` are the load checks
    (analysis/summary/load_fidelity.py) behind `load_warnings`. `curves`: the percentile curves per target
    to keep in `distributions`, `send_time_bins` the TTFT by send time to keep in `timeline` (the report page
    draws both; neither is written to summary.json).
    """
    final = run.final_scan
    window = metrics.steady_window(final, warmup_s=warmup_s, warmup_fraction=warmup_fraction)
    send_bin_s = None
    if send_time_bins is not None:
        end = final.select(pl.max_horizontal(pl.col("done_s").max(), pl.col("scheduled_s").max()))
        span = (end.collect(engine="streaming").item() or window.schedule_start_s) - window.schedule_start_s
        send_bin_s = send_time_bins.width(max(span, 0.0))
    slices = _all_targets(run, window, slos, curves, send_time_bins, send_bin_s)
    by_replica = _replica_figures(final) if run.has_replicas else {}
    targets: dict[str, Any] = {}
    for target, found in slices.items():
        tags = sorted((key[1] for key in found.stats if len(key) == 2), key=lambda tag: (tag is None, tag or ""))
        replicas = by_replica.get(target, [])
        targets[target] = {
            "all": found.stats[(target,)],
            "tags": [{"tag": tag, **found.stats[(target, tag)]} for tag in tags],
            "replicas": replicas if len(replicas) > 1 else [],
        }
    summary = RunSummary.model_validate(
        {
            "kind": SUMMARY_KIND,
            "schema_version": SUMMARY_SCHEMA_VERSION,
            "shadowreplay_version": installed_version(),
            "run_dir": str(run.run_dir),
            "run_id": run.run_id,
            "source": {
                "results_files": len(run.files),
                "rows": run.row_count,
                "final_rows": run.final_count,
                "requests_without_final_row": run.requests_without_final_row,
                "manifest": MANIFEST_NAME if run.manifest is not None else None,
            },
            "definitions": DEFINITIONS,
            "window": {
                "kind": window.kind,
                "start_s": window.start_s,
                "end_s": window.end_s,
                "duration_s": window.duration_s,
                "warmup_s": window.warmup_s,
                "schedule_start_s": window.schedule_start_s,
                "schedule_end_s": window.schedule_end_s,
            },
            "slos": [str(slo) for slo in slos],
            "targets": targets,
            "cost": cost_summary(
                final,
                window,
                prices,
                run.target_configs,
                {name: entry["all"]["throughput"]["output_tokens_per_s"] for name, entry in targets.items()},
                monthly,
            ),
            "gpu": gpu_summary(
                telemetry, final, run.targets, window, run.target_configs, run.manifest.servers if run.manifest else ()
            ),
            "server_histograms": server_histogram_summary(telemetry, run.scan, run.targets),
        }
    )
    summary.distributions = {target: found.curves for target, found in slices.items()}
    if send_bin_s is not None:
        timelines = {target: found.timeline for target, found in slices.items() if found.timeline is not None}
        summary.timeline = TtftTimeline(bin_s=send_bin_s, targets=timelines)
    summary.load_warnings = load_warnings(summary.targets, summary.server_histograms, checks)
    if completeness is not None:
        summary.completeness = completeness.model_copy(
            update={"attempted_without_final": run.requests_without_final_row}
        )
    return summary


def write_summary(run_dir: str | Path, summary: RunSummary) -> Path:
    """Write RUN_DIR/summary.json atomically (temporary file, then rename); returns its path."""
    path = RunDir(run_dir).summary_path
    write_text_atomically(path, json.dumps(summary.json_dict(), indent=2, allow_nan=False) + "\n")
    return path
