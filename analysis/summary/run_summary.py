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
    targets              {target name: {"all": STATS, "tags": [{"tag": name or null, **STATS}, ...]}}
                         "tags" is empty when no row has a tag.
    cost                 {"status": "absent", "reason"} without a price file, else (analysis/cost/model.py):
                         status "computed", prices_file, currency, billing {failed_requests},
                         monthly_volume {basis (run_span | requests | tokens | traffic_log), per_month,
                         description, schedule_span_s}, example_prices (any entry used is an example),
                         definitions, targets {name: COST}
    gpu                  {"status": "absent", "reason"} without NVML telemetry, else (analysis/telemetry/energy.py):
                         status "measured", source, definitions, devices_count, gpu_util_pct {mean, p95},
                         mem_util_pct {mean, p95}, mem_used_high_water_bytes, power_w {mean_per_gpu,
                         mean_total}, energy {joules, method (counter | power_integral | mixed), devices_measured,
                         window_s, covered_s, targets, output_tokens, joules_per_output_token},
                         devices [{host, device, samples, gpu_util_pct, mem_util_pct,
                         mem_used_high_water_bytes, mem_total_bytes, power_w {mean, p95}, energy_j,
                         energy_method, energy_covered_s}]
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

STATS (one slice: a target, or a target and tag):
    requests             final rows (one per scheduled request)
    ok, errors           final rows with status ok / any other status
    error_rate           errors / requests (null with no requests)
    errors_by_status     {status: final rows} for every non-ok status of shadowreplay.replay.schemas.results.STATUSES
    http_statuses        {"200": n, "429": n, ...} final rows by HTTP status (rows without one left out)
    attempts, retries    every row (attempt) / rows that were not final
    latency_ms           {metric: {count, mean, p50, p90, p95, p99, max}} for ttft, itl, tpot, e2e,
                         sched_ttft, sched_e2e, lateness (populations: definitions.populations)
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
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from shadowreplay.analysis.cost.model import RUN_SPAN, MonthlyVolume, cost_summary
from shadowreplay.analysis.cost.prices import PriceBook
from shadowreplay.analysis.data.run_data import RunData
from shadowreplay.analysis.data.telemetry_data import Telemetry
from shadowreplay.analysis.metrics import table as metrics
from shadowreplay.analysis.metrics.slo import Slo
from shadowreplay.analysis.summary.load_fidelity import CHECKS, LoadCheck, load_warnings
from shadowreplay.analysis.summary.models import RunSummary
from shadowreplay.analysis.telemetry.energy import gpu_summary
from shadowreplay.analysis.telemetry.server_histograms import server_histogram_summary
from shadowreplay.replay.schemas.results import STATUSES
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


def _package_version() -> str | None:
    try:
        return version("shadowreplay")
    except PackageNotFoundError:
        return None


ROW_METRICS = tuple(metric.name for metric in metrics.METRICS if not metric.per_gap)
"""The latency metrics with one value per row (metrics.population_values)."""


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


def _latency_stats(
    rows: pl.LazyFrame, slos: Sequence[Slo], curves: Curves = NO_CURVES
) -> tuple[dict[str, Any], float | None, dict[str, list[float]]]:
    """Every latency metric's statistics over one slice's final rows, flat-named like `_slice_aggregations` (the
    SLOs' percentiles included), the share of its ITL gaps read together (None: no gaps) and `curves`.

    Each population is collected once (the per-row metrics in one select, the ITL gaps with one explode of
    the token times) and all of its percentiles are taken in one call (metrics.population_stats)."""
    per_row = rows.select(metrics.population_values(name) for name in ROW_METRICS).collect()
    populations = {name: per_row.get_column(name).drop_nulls() for name in ROW_METRICS}
    del per_row
    ok_token_times = rows.filter(metrics.is_ok()).select("token_times_ms").collect().to_series()
    populations["itl"] = metrics.gaps_of_collected(ok_token_times)  # latency_values("itl"), on the flat buffer
    del ok_token_times
    gaps = populations["itl"]
    zero_gaps = gaps.to_frame("gap").select(metrics.read_together(pl.col("gap")).sum()).item()
    zero_gap_share = zero_gaps / gaps.len() if gaps.len() else None
    flat: dict[str, Any] = {}
    drawn: dict[str, list[float]] = {}
    for name in list(populations):
        values = populations.pop(name).to_numpy()  # each population is let go once its figures are taken
        asked = [slo.percentile for slo in slos if slo.metric == name]
        ps = sorted({*metrics.REPORTED_PERCENTILES, *asked})
        if name in curves.metrics:
            values = np.sort(values)
            drawn[name] = metrics.percentiles_of(values, curves.percentiles, is_sorted=True)
        stats = metrics.population_stats(values, ps, is_sorted=name in curves.metrics)
        flat[f"latency_ms.{name}.count"] = stats.count
        flat[f"latency_ms.{name}.mean"] = stats.mean
        flat[f"latency_ms.{name}.max"] = stats.max
        for p, key in zip(metrics.REPORTED_PERCENTILES, PERCENTILE_KEYS):
            flat[f"latency_ms.{name}.{key}"] = stats.percentiles[p]
        for index, slo in enumerate(slos):
            if slo.metric == name:
                flat[f"slo.{index}.value_ms"] = stats.percentiles[slo.percentile]
    return flat, zero_gap_share, drawn


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
        "output_tokens": stats["output_tokens"],
        "token_mismatch": stats["token_mismatch"],
        "window": stats["window"],
        "throughput": stats["throughput"],
        "slo": results,
        "slos_met": None if not verdicts or None in verdicts else all(verdicts),
        "output_lengths": stats["output_lengths"],
    }


@dataclass
class _Slices:
    stats: dict[tuple, dict]  # STATS by group values
    zero_gap_shares: dict[tuple, float | None]  # the share of ITL gaps read together (None: no gaps)
    curves: dict[tuple, dict[str, list[float]]]  # the Curves asked for, by metric


def _slices(
    run: RunData, keys: list[str], window: metrics.Window, slos: Sequence[Slo], curves: Curves = NO_CURVES
) -> _Slices:
    """STATS for every group of `keys` (["target"] or ["target", "tag"]), keyed by the group values, each
    group's share of ITL gaps read together and its `curves`.

    Each group is a lazy filter of the final rows (none where one group holds every row), so a query copies
    only the columns it reads: the group's counts in one select, its latency statistics in `_latency_stats`."""
    final = run.final_rows
    groups = final.select(keys).unique().rows()
    if run.rows is final:  # every row final: one attempt per request
        attempts = {}
    else:
        attempts = {tuple(row[:-1]): row[-1] for row in run.rows.group_by(keys).agg(pl.len()).iter_rows()}
    aggregations = _slice_aggregations(window, slos)
    result = _Slices({}, {}, {})
    for group in groups:
        rows = final.lazy()
        if len(groups) > 1:
            rows = rows.filter(*(pl.col(key).eq_missing(value) for key, value in zip(keys, group)))
        flat = rows.select(aggregations).collect().row(0, named=True)
        latency, result.zero_gap_shares[group], result.curves[group] = _latency_stats(rows, slos, curves)
        flat.update(latency)
        http_rows = rows.filter(pl.col("http_status").is_not_null()).group_by("http_status").agg(pl.len())
        http = {str(status): count for status, count in http_rows.sort("http_status").collect().iter_rows()}
        result.stats[group] = _slice_stats(flat, attempts.get(group, flat["requests"]), http, slos)
    return result


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
) -> RunSummary:
    """The summary of a run (keys in this module's docstring), typed; raises metrics.WindowError.

    Without `prices` the cost block says absent; without `telemetry` (analysis/data/telemetry_data.py
    load_telemetry) the gpu and server_histograms blocks do. `checks` are the load checks
    (analysis/summary/load_fidelity.py) behind `load_warnings`. `curves`: the percentile curves per target
    to keep in `distributions` (the report page draws them; not written to summary.json).
    """
    final = run.final_rows
    window = metrics.steady_window(final, warmup_s=warmup_s, warmup_fraction=warmup_fraction)
    target_slices = _slices(run, ["target"], window, slos, curves)
    by_target = target_slices.stats
    has_tags = run.rows.get_column("tag").is_not_null().any()
    by_tag = _slices(run, ["target", "tag"], window, slos).stats if has_tags else {}
    targets: dict[str, Any] = {}
    for (target,) in sorted(by_target):
        tags = sorted((tag for (t, tag) in by_tag if t == target), key=lambda tag: (tag is None, tag or ""))
        targets[target] = {
            "all": by_target[(target,)],
            "tags": [{"tag": tag, **by_tag[(target, tag)]} for tag in tags],
        }
    summary = RunSummary.model_validate(
        {
            "kind": SUMMARY_KIND,
            "schema_version": SUMMARY_SCHEMA_VERSION,
            "shadowreplay_version": _package_version(),
            "run_dir": str(run.run_dir),
            "run_id": run.run_id,
            "source": {
                "results_files": len(run.files),
                "rows": run.rows.height,
                "final_rows": final.height,
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
            "gpu": gpu_summary(telemetry, final, window, run.target_configs),
            "server_histograms": server_histogram_summary(telemetry, run.rows),
        }
    )
    summary.distributions = {target: curve for (target,), curve in target_slices.curves.items()}
    shares = {target: share for (target,), share in target_slices.zero_gap_shares.items()}
    summary.load_warnings = load_warnings(summary.targets, final, summary.server_histograms, checks, shares)
    return summary


def write_summary(run_dir: str | Path, summary: RunSummary) -> Path:
    """Write RUN_DIR/summary.json atomically (temporary file, then rename); returns its path."""
    path = RunDir(run_dir).summary_path
    write_text_atomically(path, json.dumps(summary.json_dict(), indent=2, allow_nan=False) + "\n")
    return path
