"""vLLM's own latency histograms, scraped from its /metrics during the run, against our client-side figures.

vLLM measures on the server (TTFT: from the request's arrival at the API server to its first token
out; ITL: between a request's consecutive output steps); we measure on the client (analysis/metrics/table.py:
TTFT from send to first token, ITL between token arrivals), so ours is normally a little higher (the
network, HTTP and SSE parsing). The comparison tells whether the two sides see the same latency within
the histogram's resolution, and which side is higher. Definitions (`DEFINITIONS` carries them into
summary.json), per server (the telemetry `device` of source `prometheus`: a target, or `target#i`, its
replica i, compared with the rows sent to that replica) and compared metric:

- Histogram over the run: for every bucket, cumulative count over the run = its counter at the last
  scrape - at the baseline scrape (metrics.counter_delta over the samples from the baseline on). The
  baseline is the last scrape at or before the target's first send, so counts from before the run
  (an earlier run, a warm-up) are subtracted; when every scrape came after the first send, the first
  scrape is the baseline (`baseline`: "after_first_send"). N_vllm = the delta of `<family>_count`.
  A counter that goes down between scrapes (a server restart) voids the comparison (status
  "counter_reset").
- Our values: the metric over final ok rows (metrics.ttft_ms per row; metrics.itl_gaps_ms per gap),
  kept when observed inside the scrape span (baseline t_s, last t_s]: a TTFT at first_token_s, an
  ITL gap at its end (metrics.itl_gap_ends_s). N_ours counts them; values outside the span (the server
  had not been scraped since) are counted apart.
- Quantiles q in QUANTILES: vLLM's bucket b = the first bucket whose cumulative count >= q x N_vllm;
  vLLM's estimate vllm_q = linear interpolation inside b (Prometheus histogram_quantile: the first
  bucket's lower bound is 0; in the +Inf bucket the estimate is the largest finite bound); ours_q =
  metrics.percentile (linear interpolation) of our values.
- Verdict, one rule for every quantile: beyond_bucket_ms = how far ours_q lies outside vLLM's bucket
  b = (lower[b], upper[b]] (ours_q - upper[b] above it, ours_q - lower[b] below it, 0 inside; the
  +Inf bucket reaches up without end), and agree(q) = |beyond_bucket_ms| <= AGREE_TOLERANCE_MS of
  the metric (TTFT 20 ms: the request path vLLM's clock does not see, HTTP, template and
  tokenization before its arrival stamp and the first SSE write after it, plus the client's own
  read; ITL 5 ms: one SSE write and one read per gap). The verdict depends on that distance alone,
  so of two quantiles the one further from vLLM's bucket is never judged better.
- ITL from reads that carried several tokens: tokens that arrive in one socket read share its stamp,
  so the gaps between them read 0 ms (a starved client, or a server that put several tokens in one
  chunk), while vLLM measured real gaps between its steps. `multi_token_reads` gives their share
  (zero_gaps / gaps, in the scrape span). Above MULTI_TOKEN_READ_LIMIT (10%) the ITL quantiles are
  not compared: agree is null and `comparable` false, with the share in `not_comparable` (0 ms
  gaps cannot be told from real ones, and spreading a read's wait over its tokens would invent
  the gaps vLLM measured). At or under the limit the gaps are compared as they are, the share shown.
  Per quantile, `bucket_offset` = how many buckets ours_q lies above (+) or below (-) vLLM's bucket,
  and `higher` its side ("same_bucket" at 0): inside one bucket the interpolated vllm_q cannot say
  which side is higher. Per metric, `higher` compares the exact means (vLLM: delta of `_sum` / N_vllm;
  ours: the mean of our values), `mean_ms.ours_minus_vllm` the gap.
A +Inf bound is written as null in summary.json (JSON has no infinity). No Prometheus telemetry, or
no histogram in it: the block says absent, with the reason; nothing is estimated.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

from shadowreplay.analysis.data.telemetry_data import Telemetry
from shadowreplay.analysis.metrics import table as metrics
from shadowreplay.replay.schemas.telemetry import SOURCE_PROMETHEUS, device_server, parse_bucket_metric

QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99)
MS_PER_S = 1000.0
AGREE_TOLERANCE_MS = {"ttft": 20.0, "itl": 5.0}  # how far ours_q may lie outside vLLM's bucket
MULTI_TOKEN_READ_LIMIT = 0.10  # share of 0 ms ITL gaps (tokens read together) above which ITL is not compared

DEFINITIONS = {
    "server_histogram": "per bucket: cumulative count at the last scrape - at the baseline scrape (the last one at "
    "or before the target's first send, else the first scrape); N_vllm = delta of <family>_count",
    "server_histogram_ours": "our metric (analysis/metrics/table.py) over final ok rows, values observed inside the "
    "scrape span (TTFT at first_token_s, an ITL gap at its end)",
    "server_histogram_quantile": "vLLM's bucket b = first bucket with cumulative >= q x N_vllm; vllm_q = linear "
    "interpolation inside b (Prometheus histogram_quantile); ours_q = linear-interpolation percentile of ours",
    "server_histogram_agree": "agree = |beyond_bucket_ms| <= tolerance, the same for every quantile; "
    "beyond_bucket_ms = ours_q - upper[b] above vLLM's bucket b, ours_q - lower[b] below it, 0 inside; "
    "tolerance: " + ", ".join(f"{metric.upper()} {ms:g} ms" for metric, ms in AGREE_TOLERANCE_MS.items()),
    "server_histogram_itl_reads": "multi-token reads: share of our ITL gaps that are 0 ms (tokens read together "
    f"in one socket read); above {MULTI_TOKEN_READ_LIMIT:.0%} the ITL quantiles are not comparable (agree null), "
    "at or under it compared as they are",
}

Baseline = Literal["before_first_send", "after_first_send"]


# ---- our side: values and when each was observed ----------------------------------------------


def ttft_observations(final_rows: pl.DataFrame) -> pl.DataFrame:
    """(value_ms, at_s): metrics.ttft_ms of every final ok row, observed at its first_token_s."""
    return (
        final_rows.lazy()
        .filter(metrics.is_ok())
        .select(metrics.ttft_ms().alias("value_ms"), pl.col("first_token_s").alias("at_s"))
        .drop_nulls()
        .collect()
    )


def itl_observations(final_rows: pl.DataFrame) -> pl.DataFrame:
    """(value_ms, at_s): every metrics.itl_gaps_ms gap of the final ok rows, observed when the gap ends."""
    return (
        final_rows.lazy()
        .filter(metrics.is_ok())
        .select(metrics.gaps_of(pl.col("token_times_ms")).alias("value_ms"), metrics.gap_ends_s().alias("at_s"))
        .drop_nulls()
        .collect()
    )


OBSERVED_COLUMNS = ("sent_s", "final", "status", "ttft_ms", "first_token_s", "token_times_ms")
"""The result columns the comparison reads (each target's rows are taken with these only)."""


@dataclass(frozen=True)
class ComparedMetric:
    """One of our metrics and the vLLM histogram measuring the same thing (`families`: the names vLLM
    versions give it, the first one scraped is used)."""

    metric: str
    families: tuple[str, ...]
    observations: Callable[[pl.DataFrame], pl.DataFrame]


COMPARED_METRICS: tuple[ComparedMetric, ...] = (
    ComparedMetric("ttft", ("vllm:time_to_first_token_seconds",), ttft_observations),
    ComparedMetric("itl", ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"), itl_observations),
)


# ---- vLLM's side: a histogram's counts over the run ---------------------------------------------


@dataclass(frozen=True)
class HistogramDelta:
    """One vLLM histogram's cumulative bucket counts over the run (upper bounds in ms, the last +Inf)."""

    family: str
    upper_ms: tuple[float, ...]
    cumulative: tuple[float, ...]
    count: float
    sum_ms: float | None
    baseline_t_s: float
    end_t_s: float
    baseline: Baseline
    counter_reset: bool

    def lower_ms(self, bucket: int) -> float:
        """The lower bound of a bucket (0 below the first one)."""
        return 0.0 if bucket <= 0 else self.upper_ms[min(bucket, len(self.upper_ms)) - 1]

    def upper_of(self, bucket: int) -> float:
        """The upper bound of a bucket (+Inf past the last one)."""
        return self.upper_ms[bucket] if bucket < len(self.upper_ms) else math.inf

    def quantile_bucket(self, q: float) -> int | None:
        """The first bucket whose cumulative count >= q x count; None when the histogram is empty."""
        if self.count <= 0:
            return None
        rank = q * self.count
        for index, cumulative in enumerate(self.cumulative):
            if cumulative >= rank:
                return index
        return len(self.cumulative) - 1

    def quantile_estimate_ms(self, q: float) -> float | None:
        """vllm_q: linear interpolation inside the quantile's bucket (Prometheus histogram_quantile)."""
        bucket = self.quantile_bucket(q)
        if bucket is None:
            return None
        upper = self.upper_ms[bucket]
        if math.isinf(upper):
            finite = [bound for bound in self.upper_ms if not math.isinf(bound)]
            return finite[-1] if finite else None
        below = self.cumulative[bucket - 1] if bucket > 0 else 0.0
        inside = self.cumulative[bucket] - below
        lower = self.lower_ms(bucket)
        if inside <= 0:
            return upper
        return lower + (upper - lower) * (q * self.count - below) / inside

    def bucket_of(self, value_ms: float) -> int:
        """The bucket a value falls in: the first whose upper bound >= value (Prometheus `le`)."""
        return min(bisect_left(self.upper_ms, value_ms), len(self.upper_ms) - 1)


def _bucket_bounds(samples: pl.DataFrame, family: str) -> dict[str, float]:
    """Bucket metric name -> upper bound in s, for the family's buckets among the samples."""
    prefix = f"{family}_bucket"
    names = samples.filter(pl.col("metric").str.starts_with(prefix + "{")).get_column("metric").unique().to_list()
    bounds = {}
    for name in names:
        parsed = parse_bucket_metric(name)
        if parsed is not None and parsed[0] == prefix:
            bounds[name] = parsed[1]
    return bounds


def histogram_delta(device_samples: pl.DataFrame, family: str, first_send_s: float) -> HistogramDelta | None:
    """The histogram `family` over the run from one device's Prometheus samples (module docstring:
    baseline = last scrape at or before `first_send_s`, else the first); None without its buckets."""
    bounds = _bucket_bounds(device_samples, family)
    if not bounds:
        return None
    count_metric, sum_metric = f"{family}_count", f"{family}_sum"
    series = device_samples.filter(pl.col("metric").is_in([*bounds, count_metric, sum_metric]))
    times = series.get_column("t_s")
    before = times.filter(times <= first_send_s)
    baseline_t = float(before.max()) if len(before) else float(times.min())  # type: ignore[arg-type]
    kept = series.filter(pl.col("t_s") >= baseline_t)
    per_metric = (
        kept.group_by("metric")
        .agg(
            metrics.counter_delta(),
            (pl.col("value").sort_by("t_s").diff() < 0).any().alias("went_down"),
            pl.col("t_s").max().alias("end_t_s"),
        )
        .with_columns(pl.col("went_down").fill_null(False))
    )
    delta = {row["metric"]: row["counter_delta"] for row in per_metric.iter_rows(named=True)}
    ordered = sorted(bounds, key=bounds.__getitem__)
    # rounded to the nanosecond, so that 0.06 s reads 60 ms, not 60.00000000000001
    upper_ms = [round(bounds[name] * MS_PER_S, 6) if not math.isinf(bounds[name]) else math.inf for name in ordered]
    cumulative = [delta[name] for name in ordered]
    count = delta.get(count_metric, cumulative[-1] if math.isinf(upper_ms[-1]) else None)
    if count is None:  # no +Inf bucket and no _count: the top bucket is all we know
        count = cumulative[-1]
    if not math.isinf(upper_ms[-1]):
        upper_ms.append(math.inf)
        cumulative.append(count)
    sum_s = delta.get(sum_metric)
    return HistogramDelta(
        family=family,
        upper_ms=tuple(upper_ms),
        cumulative=tuple(cumulative),
        count=count,
        sum_ms=None if sum_s is None else sum_s * MS_PER_S,
        baseline_t_s=baseline_t,
        end_t_s=float(per_metric.get_column("end_t_s").max()),  # type: ignore[arg-type]
        baseline="before_first_send" if len(before) else "after_first_send",
        counter_reset=bool(per_metric.get_column("went_down").any()),
    )


# ---- the comparison ----------------------------------------------------------------------------


def _bound(value: float) -> float | None:
    """A bound for JSON: +Inf as null."""
    return None if math.isinf(value) else value


def beyond_bucket_ms(histogram: HistogramDelta, bucket: int, ours_q: float) -> float:
    """How far ours_q lies outside vLLM's bucket b: ours_q - upper[b] above, ours_q - lower[b] below, 0 inside."""
    upper = histogram.upper_of(bucket)
    if ours_q > upper:
        return ours_q - upper
    lower = histogram.lower_ms(bucket)
    return ours_q - lower if ours_q < lower else 0.0


def agrees(histogram: HistogramDelta, bucket: int, ours_q: float, tolerance_ms: float) -> bool:
    """agree = |beyond_bucket_ms| <= tolerance_ms (module docstring: one rule for every quantile)."""
    return abs(beyond_bucket_ms(histogram, bucket, ours_q)) <= tolerance_ms


def _higher(ours: float, vllm: float) -> Literal["ours", "vllm", "equal"]:
    return "ours" if ours > vllm else "vllm" if ours < vllm else "equal"


def _higher_bucket(offset: int) -> Literal["ours", "vllm", "same_bucket"]:
    return "ours" if offset > 0 else "vllm" if offset < 0 else "same_bucket"


def _quantile_row(
    histogram: HistogramDelta, values: pl.Series, q: float, tolerance_ms: float, comparable: bool
) -> dict[str, Any]:
    bucket = histogram.quantile_bucket(q)
    vllm_q = histogram.quantile_estimate_ms(q)
    ours_q = values.to_frame("v").select(metrics.percentile(pl.col("v"), q * 100.0)).item() if len(values) else None
    row: dict[str, Any] = {
        "quantile": metrics.percentile_key(q * 100.0),
        "q": q,
        "vllm_bucket_ms": None,
        "vllm_estimate_ms": vllm_q,
        "ours_ms": ours_q,
        "ours_bucket_ms": None,
        "beyond_bucket_ms": None,
        "bucket_offset": None,
        "higher": None,
        "agree": None,
    }
    if bucket is not None:
        row["vllm_bucket_ms"] = [histogram.lower_ms(bucket), _bound(histogram.upper_of(bucket))]
    if ours_q is not None:
        ours_bucket = histogram.bucket_of(ours_q)
        row["ours_bucket_ms"] = [histogram.lower_ms(ours_bucket), _bound(histogram.upper_of(ours_bucket))]
        if bucket is not None and vllm_q is not None:
            row["bucket_offset"] = ours_bucket - bucket
            row["higher"] = _higher_bucket(ours_bucket - bucket)
            row["beyond_bucket_ms"] = beyond_bucket_ms(histogram, bucket, ours_q)
            row["agree"] = agrees(histogram, bucket, ours_q, tolerance_ms) if comparable else None
    return row


def multi_token_reads(gaps_ms: pl.Series) -> dict[str, Any]:
    """The share of ITL gaps that are 0 ms (metrics.read_together: tokens read together), against the limit."""
    gaps = len(gaps_ms)
    zero = int(gaps_ms.to_frame("gap").select(metrics.read_together(pl.col("gap")).sum()).item()) if gaps else 0
    share = zero / gaps if gaps else None
    return {"zero_gaps": zero, "gaps": gaps, "share": share, "limit": MULTI_TOKEN_READ_LIMIT}


def compare_metric(
    histogram: HistogramDelta,
    observations: pl.DataFrame,
    quantiles: tuple[float, ...] = QUANTILES,
    metric: str = "ttft",
) -> dict[str, Any]:
    """One metric of one target: counts, means, quantile verdicts and both cumulative histograms."""
    if histogram.counter_reset:
        return {
            "status": "counter_reset",
            "reason": f"{histogram.family} went down between scrapes (a server restart?); counts over the run unknown",
            "vllm_family": histogram.family,
        }
    in_span = observations.filter(pl.col("at_s").is_between(histogram.baseline_t_s, histogram.end_t_s, closed="right"))
    values = in_span.get_column("value_ms")
    vllm_count = int(round(histogram.count))
    ours_count = len(values)
    reads = multi_token_reads(values) if metric == "itl" else None
    comparable = reads is None or reads["share"] is None or reads["share"] <= MULTI_TOKEN_READ_LIMIT
    tolerance = AGREE_TOLERANCE_MS[metric]
    rows = [_quantile_row(histogram, values, q, tolerance, comparable) for q in quantiles]
    verdicts = [row["agree"] for row in rows if row["agree"] is not None]
    vllm_mean = histogram.sum_ms / histogram.count if histogram.sum_ms is not None and histogram.count > 0 else None
    ours_mean = float(values.mean()) if ours_count else None  # type: ignore[arg-type]
    gap = None if vllm_mean is None or ours_mean is None else ours_mean - vllm_mean
    ours_cumulative = [int((values <= bound).sum()) for bound in histogram.upper_ms]
    return {
        "status": "compared",
        "vllm_family": histogram.family,
        "counts": {
            "vllm": vllm_count,
            "ours": ours_count,
            "ours_ok_total": observations.height,
            "ours_outside_scrape_span": observations.height - ours_count,
            "vllm_minus_ours": vllm_count - ours_count,
            "equal": vllm_count == ours_count,
        },
        "mean_ms": {
            "vllm": vllm_mean,
            "ours": ours_mean,
            "ours_minus_vllm": gap,
        },
        "higher": None if vllm_mean is None or ours_mean is None else _higher(ours_mean, vllm_mean),
        "tolerance_ms": tolerance,
        "multi_token_reads": reads,
        "comparable": comparable,
        "quantiles": rows,
        "agree": all(verdicts) if verdicts else None,
        "buckets": [
            {"le_ms": _bound(upper), "vllm": int(round(cumulative)), "ours": ours}
            for upper, cumulative, ours in zip(histogram.upper_ms, histogram.cumulative, ours_cumulative, strict=True)
        ],
    }


def _target_block(device_samples: pl.DataFrame, target_rows: pl.DataFrame) -> dict[str, Any]:
    sent = target_rows.get_column("sent_s").drop_nulls()
    first_send_s = float(sent.min()) if len(sent) else 0.0  # type: ignore[arg-type]
    final = target_rows.filter(pl.col("final"))
    compared: dict[str, Any] = {}
    scrape: dict[str, Any] | None = None
    for spec in COMPARED_METRICS:
        histogram = next(
            (h for h in (histogram_delta(device_samples, family, first_send_s) for family in spec.families) if h),
            None,
        )
        if histogram is None:
            compared[spec.metric] = {"status": "absent", "reason": f"no {' or '.join(spec.families)} buckets scraped"}
            continue
        if scrape is None:
            scrape = {
                "first_send_s": first_send_s if len(sent) else None,
                "baseline_t_s": histogram.baseline_t_s,
                "end_t_s": histogram.end_t_s,
                "baseline": histogram.baseline,
            }
        compared[spec.metric] = compare_metric(histogram, spec.observations(final), metric=spec.metric)
    return {"scrapes": scrape, "metrics": compared}


def _flags(targets: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """One line per disagreeing quantile, per count difference and per metric not compared."""
    disagreements, count_differences, not_comparable = [], [], []
    for target, block in targets.items():
        for metric, result in block["metrics"].items():
            if result["status"] != "compared":
                continue
            for row in result["quantiles"]:
                if row["agree"] is False:
                    low, high = row["vllm_bucket_ms"]
                    disagreements.append(
                        f"{target} {metric} {row['quantile']}: ours {row['ours_ms']:.1f} ms vs vLLM bucket "
                        f"{low:,.10g}-{'+Inf' if high is None else f'{high:,.10g}'} ms, "
                        f"{abs(row['beyond_bucket_ms']):.1f} ms {'above' if row['beyond_bucket_ms'] > 0 else 'below'} "
                        f"it, tolerance {result['tolerance_ms']:g} ms ({row['higher']} higher)"
                    )
            reads = result.get("multi_token_reads")
            if not result["comparable"] and reads is not None:
                not_comparable.append(
                    f"{target} {metric}: multi-token reads, {reads['share']:.0%} of gaps are 0 ms (tokens read "
                    f"together), over the {reads['limit']:.0%} limit"
                )
            counts = result["counts"]
            if not counts["equal"]:
                count_differences.append(f"{target} {metric}: vLLM counted {counts['vllm']}, we {counts['ours']}")
    return disagreements, count_differences, not_comparable


def server_histogram_summary(
    telemetry: Telemetry | None, rows: pl.LazyFrame, targets_run: Sequence[str]
) -> dict[str, Any]:
    """The `server_histograms` block of summary.json from a run's telemetry and its result rows (every
    attempt, with the `final` column; `targets_run`: every target with rows); `{"status": "absent",
    "reason"}` without scraped histograms. Each scraped target's rows are collected with OBSERVED_COLUMNS only."""
    if telemetry is None:
        return {"status": "absent", "reason": "the run has no telemetry (RUN_DIR/telemetry)"}
    scraped = telemetry.source(SOURCE_PROMETHEUS)
    if scraped.height == 0:
        return {
            "status": "absent",
            "reason": "no vLLM /metrics scrapes in the telemetry (scraped: `kind: vllm` targets started by the replay, "
            "and targets with a `metrics_url`)",
        }
    targets: dict[str, Any] = {}
    for device in sorted(scraped.get_column("device").unique().to_list()):
        target, replica = device_server(device)  # a replica's server is compared with the rows sent to it
        of_server = pl.col("target") == target
        if replica is not None:
            of_server = of_server & (pl.col("replica") == replica)
        target_rows = rows.filter(of_server).select(OBSERVED_COLUMNS).collect()
        block = _target_block(scraped.filter(pl.col("device") == device), target_rows)
        if block["scrapes"] is not None:
            targets[device] = block
    if not targets:
        families = ", ".join(family for spec in COMPARED_METRICS for family in spec.families)
        return {"status": "absent", "reason": f"the /metrics scrapes hold none of these histograms: {families}"}
    disagreements, count_differences, not_comparable = _flags(targets)
    return {
        "status": "compared",
        "definitions": DEFINITIONS,
        "quantiles": list(QUANTILES),
        "targets": targets,
        "targets_not_scraped": sorted(set(targets_run) - {device_server(device)[0] for device in targets}),
        "disagreements": disagreements,
        "count_differences": count_differences,
        "not_comparable": not_comparable,
    }
