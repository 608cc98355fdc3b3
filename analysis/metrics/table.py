"""The metric vocabulary of docs/DESIGN.md, each metric defined once as a polars expression.

Every report, sweep curve, capacity plan and shadow comparison computes its figures through this
module; nothing else restates a formula. The expressions read result rows (replay/schemas/results.py
columns) and are meant for a frame of *final* rows (`RunData.final_rows`): a non-final row is an
attempt that was retried, and counts only in the attempt figures.

Conventions, stated once:
- Populations. Latency metrics (TTFT, ITL, TPOT, e2e and the from-scheduled latencies) are taken
  over final rows with status `ok`; lateness over final rows that were sent (any status); errors
  are final rows whose status is not `ok`; throughput and goodput count final `ok` rows whose
  `done_s` falls in the steady window.
- Percentiles: `PERCENTILE_METHOD`, linear interpolation between the two nearest ranks (numpy's
  default `linear`, Hyndman & Fan type 7): for sorted values x[0..n-1], the p-th percentile is
  x[i] + (x[i+1] - x[i]) * f where i + f = (n - 1) * p / 100. Nulls are ignored; no values -> null.
- The steady window (`steady_window`): from the first scheduled send plus a warm-up to the last
  scheduled send (the drain after it is excluded). The warm-up defaults to
  `DEFAULT_WARMUP_FRACTION` of the schedule span and can be given in seconds instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import polars as pl

from shadowreplay.errors import ShadowReplayError

if TYPE_CHECKING:
    from shadowreplay.analysis.metrics.slo import Slo

PERCENTILE_METHOD: Literal["linear"] = "linear"
REPORTED_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0)
MISMATCH_TOLERANCE = 0.02
DEFAULT_WARMUP_FRACTION = 0.10


class WindowError(ShadowReplayError, ValueError):
    """A steady-window request that leaves no window (e.g. a warm-up longer than the schedule)."""


# ---- row populations ------------------------------------------------------------------------


def is_ok() -> pl.Expr:
    """A request that completed: status == "ok"."""
    return pl.col("status") == "ok"


def is_error() -> pl.Expr:
    """A request that failed: status != "ok" (on final rows: the request's outcome)."""
    return pl.col("status") != "ok"


# ---- per-request metrics --------------------------------------------------------------------


def ttft_ms() -> pl.Expr:
    """TTFT = first output token (content or reasoning) - send, in ms (`ttft_ms` as the client stamped it)."""
    return pl.col("ttft_ms").alias("ttft_ms")


def itl_gaps_ms() -> pl.Expr:
    """ITL of one request = [t[i] - t[i-1] for consecutive entries of token_times_ms], in ms (a list)."""
    return pl.col("token_times_ms").list.diff(null_behavior="drop").alias("itl_gaps_ms")


def read_together(gap_ms: pl.Expr) -> pl.Expr:
    """A gap of 0 ms: two output tokens that arrived in one socket read (or one multi-token chunk) and
    share its stamp; ITL reports their share ("multi-token reads") rather than pass them for real gaps."""
    return gap_ms == 0.0


def read_together_count(gaps_ms: np.ndarray) -> int:
    """How many of a collected ITL population's gaps are read_together (exactly 0 ms)."""
    return int(np.count_nonzero(gaps_ms == 0.0))


def _after_first_entries(flat: pl.Expr, lists: pl.Expr) -> pl.Expr:
    """`flat` (an expression aligned with `lists` exploded) where the entry is not its row's first."""
    return flat.filter(pl.int_ranges(lists.list.len()).explode() > 0)


def gaps_of(token_times_ms: pl.Expr) -> pl.Expr:
    """The gaps of itl_gaps_ms, every row's flattened into one column in row order (nulls kept), computed on the
    exploded token times: t[i] - t[i-1] wherever t[i] is not a row's first token (one explode, no per-list work)."""
    return _after_first_entries(token_times_ms.explode().diff(), token_times_ms)


def gap_codes(token_times_ms: pl.Series, row_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """gaps_of over an already collected list column, on the flat buffer of every row's token times at once:
    (t[j] - t[j-1] for every flat entry j but the first, the code of each). A difference is a gap of row r
    (code row_codes[r], an int array; -1 leaves a row out) when both entries are r's and neither is null;
    every other difference (across two rows, or touching a missing token time) has code -1."""
    lengths = token_times_ms.list.len().fill_null(0).to_numpy()
    flat = token_times_ms.to_frame("t").select(pl.col("t").explode(empty_as_null=False, keep_nulls=False)).to_series()
    codes = np.repeat(row_codes, lengths)[1:]  # the row code of each difference's later entry
    row_ends = np.cumsum(lengths)[:-1] - 1  # a row's last entry, where the next difference crosses rows
    codes[row_ends[(row_ends >= 0) & (row_ends < len(codes))]] = -1
    if flat.null_count():  # a missing token time: its gaps are null (gaps_of), dropped here
        missing = flat.is_null().to_numpy()
        codes[missing[1:] | missing[:-1]] = -1
        flat = flat.fill_null(0.0)
    return np.diff(flat.to_numpy()), codes


def gaps_of_collected(token_times_ms: pl.Series) -> pl.Series:
    """gaps_of over an already collected list column, nulls dropped (the ITL population of its rows)."""
    differences, codes = gap_codes(token_times_ms, np.zeros(token_times_ms.len(), dtype=np.int16))
    return pl.Series("itl_ms", differences[codes == 0])


def itl_ms() -> pl.Expr:
    """ITL = every gap between consecutive output tokens, all requests' gaps exploded into one column, ms."""
    return gaps_of(pl.col("token_times_ms")).drop_nulls().alias("itl_ms")


def token_arrivals_s() -> pl.Expr:
    """Token arrivals on the run's timeline = [sent_s + t / 1000 for t in token_times_ms], in s (a list)."""
    return (pl.col("sent_s") + pl.col("token_times_ms") / 1000.0).alias("token_arrivals_s")


def itl_gap_ends_s() -> pl.Expr:
    """When each ITL gap ends = token_arrivals_s without its first entry, in run s (a list aligned with itl_gaps_ms)."""
    return token_arrivals_s().list.slice(1).alias("itl_gap_ends_s")


def gap_ends_s() -> pl.Expr:
    """itl_gap_ends_s flattened like gaps_of(token_times_ms): when each of those gaps ends, in run s."""
    return _after_first_entries(token_arrivals_s().explode(), pl.col("token_times_ms")).alias("gap_ends_s")


def output_tokens() -> pl.Expr:
    """Output tokens = completion_tokens (server usage) when given, else client_tokens (client count)."""
    return pl.coalesce(pl.col("completion_tokens"), pl.col("client_tokens")).alias("output_tokens")


def e2e_ms() -> pl.Expr:
    """e2e = last output token - send, in ms (`e2e_ms` as the client stamped it)."""
    return pl.col("e2e_ms").alias("e2e_ms")


def tpot_ms() -> pl.Expr:
    """TPOT = (e2e - TTFT) / (output tokens - 1), ms; null when output tokens <= 1."""
    tokens = output_tokens()
    return (
        pl.when(tokens > 1).then((pl.col("e2e_ms") - pl.col("ttft_ms")) / (tokens - 1)).otherwise(None).alias("tpot_ms")
    )


def sched_ttft_ms() -> pl.Expr:
    """TTFT from the schedule = (first_token_s - scheduled_s) * 1000: counts client queueing (coordinated omission)."""
    return ((pl.col("first_token_s") - pl.col("scheduled_s")) * 1000.0).alias("sched_ttft_ms")


def sched_e2e_ms() -> pl.Expr:
    """e2e from the schedule = (done_s - scheduled_s) * 1000: includes client queueing and retries' waits."""
    return ((pl.col("done_s") - pl.col("scheduled_s")) * 1000.0).alias("sched_e2e_ms")


def lateness_ms() -> pl.Expr:
    """Lateness = send - scheduled send, in ms (`lateness_ms`): how far the load generator fell behind."""
    return pl.col("lateness_ms").alias("lateness_ms")


def token_mismatch() -> pl.Expr:
    """Mismatch = |completion_tokens - client_tokens| / completion_tokens > 2%; null unless both counts are given.

    `client_tokens` is the client's own count, never read from the server's usage
    (replay/clients/stream_client.py: one per token event where the server streams one token
    each, "" events included; the tokenizer's count of a chunk's text where chunks carry several,
    replacement characters counting one each; logprobs entries where the wire gives them), so a
    healthy server shows no mismatch and a server that miscounts its usage does."""
    server = pl.col("completion_tokens").cast(pl.Float64)
    client = pl.col("client_tokens").cast(pl.Float64)
    # Written without the division so that a server count of 0 compares cleanly (0 vs 0 is no mismatch).
    return ((server - client).abs() > MISMATCH_TOLERANCE * server).alias("token_mismatch")


# ---- the metric table -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Metric:
    """One latency metric, defined once: what the summary reports, an SLO or a gate may name.

    `values` gives one value per member of `population` (a column of final rows; for a per-gap
    metric, a list column of gaps per row); `formula` is the one-line definition shown in reports.
    """

    name: str
    unit: str
    population: Literal["final ok rows", "gaps of final ok rows", "final sent rows"]
    formula: str
    values: Callable[[], pl.Expr]
    slo: bool  # an SLO (`--slo name_pNN=...`) may use it
    gate: bool  # a shadow gate may use it
    null_meets: bool = False  # a request without a value (fewer than two tokens) meets its SLOs

    @property
    def per_gap(self) -> bool:
        return self.population == "gaps of final ok rows"


METRICS: tuple[Metric, ...] = (
    Metric("ttft", "ms", "final ok rows", "time to first token (send to first output token)", ttft_ms, True, True),
    Metric(
        "itl",
        "ms",
        "gaps of final ok rows",
        "inter-token latency (gap between consecutive output tokens)",
        itl_gaps_ms,
        True,
        True,
        null_meets=True,
    ),
    Metric(
        "tpot",
        "ms",
        "final ok rows",
        "time per output token after the first: (e2e - TTFT) / (output tokens - 1)",
        tpot_ms,
        True,
        True,
        null_meets=True,
    ),
    Metric("e2e", "ms", "final ok rows", "end to end (send to last token)", e2e_ms, True, True),
    Metric(
        "sched_ttft",
        "ms",
        "final ok rows",
        "first token after the scheduled send time (includes client queueing)",
        sched_ttft_ms,
        True,
        True,
    ),
    Metric(
        "sched_e2e",
        "ms",
        "final ok rows",
        "request done after the scheduled send time (includes client queueing)",
        sched_e2e_ms,
        True,
        True,
    ),
    Metric(
        "lateness",
        "ms",
        "final sent rows",
        "send after the scheduled send time (load generator health)",
        lateness_ms,
        False,
        False,
    ),
)
"""Every latency metric, in report order. Adding a metric is one entry here."""

METRIC_BY_NAME: dict[str, Metric] = {metric.name: metric for metric in METRICS}
LATENCY_METRICS: dict[str, str] = {metric.name: metric.formula for metric in METRICS}
"""Every latency metric the summary reports, by name, with its formula."""


def latency_values(metric: str) -> pl.Expr:
    """The values a latency metric's statistics are taken over, for use in `select`/`agg` on final rows.

    Each metric's population (METRICS): one value per final `ok` row (TTFT, TPOT, e2e, sched_ttft,
    sched_e2e); every gap of those rows (ITL); one value per final row that was sent (lateness).
    Nulls dropped.
    """
    entry = METRIC_BY_NAME[metric]
    if entry.population == "final sent rows":
        return entry.values().drop_nulls()
    if entry.per_gap:
        return gaps_of(pl.col("token_times_ms").filter(is_ok())).drop_nulls().alias("itl_ms")
    return entry.values().filter(is_ok()).drop_nulls()


def population_values(metric: str) -> pl.Expr:
    """A per-row metric (not ITL) for every row, null outside its population, named after the metric: computed
    once as a column, its statistics are plain aggregations (count of non-nulls, mean, max, percentiles), which
    ignore nulls, over that column; the same values as latency_values(metric)."""
    entry = METRIC_BY_NAME[metric]
    if entry.per_gap:
        raise ValueError(f"{metric} has a value per gap, not per row: use latency_values")
    values = entry.values() if entry.population == "final sent rows" else pl.when(is_ok()).then(entry.values())
    return values.alias(metric)


def percentile(values: pl.Expr, p: float) -> pl.Expr:
    """The p-th percentile (0 < p <= 100) of `values` by PERCENTILE_METHOD (linear interpolation)."""
    return values.quantile(p / 100.0, interpolation=PERCENTILE_METHOD)


@dataclass(frozen=True, slots=True)
class PopulationStats:
    """count, mean, max and percentiles (by p) of one metric's population (nulls dropped); None where it is empty."""

    count: int
    mean: float | None
    max: float | None
    percentiles: dict[float, float | None]


def population_stats(values: np.ndarray, ps: Sequence[float], is_sorted: bool = False) -> PopulationStats:
    """The statistics of an already collected population (latency_values, or population_values with the nulls
    dropped) with all percentiles in one call (percentiles_of): the same figures as count/mean/max and
    `percentile` over it. `is_sorted`: the values are sorted ascending already."""
    if len(values) == 0:
        return PopulationStats(0, None, None, {p: None for p in ps})
    found = percentiles_of(values, ps, is_sorted)
    return PopulationStats(len(values), float(values.mean()), float(values.max()), dict(zip(ps, found, strict=True)))


def percentiles_of(values: np.ndarray, ps: Sequence[float], is_sorted: bool = False) -> list[float]:
    """The ps-th percentiles (0 <= p <= 100) of an already collected column by PERCENTILE_METHOD, in one call:
    numpy's `linear` (the same rule) over unsorted values; over sorted ones (`is_sorted`) the rule itself,
    x[i] + (x[i+1] - x[i]) * f with i + f = (n - 1) * p / 100, read off at once for every p. [] for no values."""
    if len(values) == 0:
        return []
    if not is_sorted:
        return [float(v) for v in np.percentile(values, list(ps), method=PERCENTILE_METHOD)]
    positions = (len(values) - 1) * np.asarray(ps, dtype=np.float64) / 100.0
    lower = np.floor(positions).astype(np.int64)
    upper = np.minimum(lower + 1, len(values) - 1)
    below, above = values[lower], values[upper]
    return [float(v) for v in below + (above - below) * (positions - lower)]


def binned_percentiles(
    bins: np.ndarray, values: np.ndarray, ps: Sequence[float]
) -> tuple[np.ndarray, list[list[float]]]:
    """The ps-th percentiles (percentiles_of) of `values` in each bin (`bins`: an integer per value): (the bins
    that hold values, ascending; per p, its percentile in each of them). One stable sort groups the values."""
    if len(values) == 0:
        return np.empty(0, dtype=np.int64), [[] for _ in ps]
    order = np.argsort(bins, kind="stable")
    grouped_bins, grouped = bins[order], values[order]
    starts = np.flatnonzero(np.diff(grouped_bins)) + 1
    found = [percentiles_of(group, ps) for group in np.split(grouped, starts)]
    return grouped_bins[np.concatenate([[0], starts])], [[row[i] for row in found] for i in range(len(ps))]


def time_bin(column: str, bin_s: float) -> pl.Expr:
    """The index of the `bin_s`-wide time bin holding `column`'s value (bin i spans [i, i + 1) x bin_s)."""
    return (pl.col(column) / bin_s).floor().cast(pl.Int64).alias("bin")


def percentile_key(p: float) -> str:
    """The key naming a percentile in summaries: 50 -> `p50`, 99.9 -> `p99.9`."""
    text = repr(float(p))
    return "p" + (text[:-2] if text.endswith(".0") else text)


# ---- SLOs and goodput -----------------------------------------------------------------------


def request_value(slo: Slo) -> pl.Expr:
    """A request's own value for an SLO: its metric (for ITL: the SLO's percentile of its own gaps), ms."""
    entry = METRIC_BY_NAME[slo.metric]
    if entry.per_gap:
        within = pl.element().quantile(slo.percentile / 100.0, interpolation=PERCENTILE_METHOD)
        return entry.values().list.eval(within).list.first()
    return entry.values()


def meets_slo(slo: Slo) -> pl.Expr:
    """Per request: request_value(slo) <= threshold_ms; a missing TPOT/ITL (< 2 tokens) meets it, other gaps fail."""
    value = request_value(slo)
    missing = pl.lit(METRIC_BY_NAME[slo.metric].null_meets)
    return pl.when(value.is_null()).then(missing).otherwise(value <= slo.threshold_ms).alias(f"meets_{slo.name}")


def meets_all_slos(slos: Sequence[Slo]) -> pl.Expr:
    """Per request: status ok and meets_slo for every SLO (just status ok when there are none)."""
    good = is_ok()
    for slo in slos:
        good = good & meets_slo(slo)
    return good.alias("meets_all_slos")


# ---- the steady window and rates ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """The interval, in run seconds, over which throughput and goodput are measured.

    kind `steady`: [first scheduled send + warm-up, last scheduled send]. kind `whole_run`
    (used when that interval is empty and no warm-up was asked for, e.g. every request scheduled
    at once): [first scheduled send, last done]. A request counts when its `done_s` is inside,
    both ends included.
    """

    kind: Literal["steady", "whole_run"]
    start_s: float
    end_s: float
    warmup_s: float
    schedule_start_s: float
    schedule_end_s: float

    @property
    def duration_s(self) -> float:
        return max(self.end_s - self.start_s, 0.0)

    def contains_done(self) -> pl.Expr:
        """start_s <= done_s <= end_s."""
        return pl.col("done_s").is_between(self.start_s, self.end_s, closed="both")

    def rate(self, count: float) -> float | None:
        """count / duration_s, or None for an empty window."""
        return count / self.duration_s if self.duration_s > 0 else None


def steady_window(
    final_rows: pl.LazyFrame,
    warmup_s: float | None = None,
    warmup_fraction: float = DEFAULT_WARMUP_FRACTION,
) -> Window:
    """The steady window of a run from its final rows (all targets share one schedule).

    warm-up = `warmup_s` if given, else `warmup_fraction` x (last - first scheduled send).
    Raises WindowError when an explicit warm-up leaves nothing, or when no row has a schedule.
    """
    if warmup_s is not None and warmup_s < 0:
        raise WindowError(f"warm-up {warmup_s} s is negative")
    bounds = (
        final_rows.select(
            pl.col("scheduled_s").min().alias("first"),
            pl.col("scheduled_s").max().alias("last"),
            pl.col("done_s").max().alias("done"),
        )
        .collect(engine="streaming")
        .row(0, named=True)
    )
    first, last, done = bounds["first"], bounds["last"], bounds["done"]
    if first is None or last is None:
        raise WindowError("no result row has a scheduled_s; cannot place a steady window")
    span = last - first
    warmup = warmup_s if warmup_s is not None else warmup_fraction * span
    start = first + warmup
    if start < last:
        return Window("steady", start, last, warmup, first, last)
    if warmup_s is not None and warmup_s > 0:
        raise WindowError(f"a warm-up of {warmup_s:g} s leaves no steady window: the schedule spans {span:g} s")
    end = done if done is not None and done > first else first
    return Window("whole_run", first, end, 0.0, first, last)


def completed_in_window(window: Window) -> pl.Expr:
    """Per request: status ok and start_s <= done_s <= end_s (what throughput counts)."""
    return (is_ok() & window.contains_done()).alias("completed_in_window")


def _per_window_second(count: pl.Expr, window: Window) -> pl.Expr:
    if window.duration_s <= 0:
        return pl.lit(None, dtype=pl.Float64)
    return count.cast(pl.Float64) / window.duration_s


def requests_per_s(window: Window) -> pl.Expr:
    """Requests/s = (final ok rows with done_s in the window) / window duration (aggregate)."""
    return _per_window_second(completed_in_window(window).sum(), window).alias("requests_per_s")


def output_tokens_per_s(window: Window) -> pl.Expr:
    """Output tokens/s = sum of output_tokens over final ok rows done in the window / window duration (aggregate)."""
    tokens = output_tokens().filter(completed_in_window(window)).sum()
    return _per_window_second(tokens, window).alias("output_tokens_per_s")


def goodput_rps(window: Window, slos: Sequence[Slo]) -> pl.Expr:
    """Goodput = (final ok rows done in the window that meet every SLO) / window duration, requests/s (aggregate)."""
    good = (completed_in_window(window) & meets_all_slos(slos)).sum()
    return _per_window_second(good, window).alias("goodput_rps")


def error_rate() -> pl.Expr:
    """Error rate = final rows with status != ok / final rows (aggregate; null when there are none)."""
    return pl.when(pl.len() > 0).then(is_error().sum().cast(pl.Float64) / pl.len()).otherwise(None).alias("error_rate")


# ---- billed tokens (the cost model's inputs) --------------------------------------------------


def is_billed(bill_failed: bool = False) -> pl.Expr:
    """Billed = final row with status ok; with bill_failed, every final row (failed ones pay for what they got)."""
    return pl.col("final") if bill_failed else pl.col("final") & is_ok()


def input_tokens() -> pl.Expr:
    """Input tokens = prompt_tokens (server usage) when given, else expected_prompt_tokens (what the replay sent)."""
    return pl.coalesce(pl.col("prompt_tokens"), pl.col("expected_prompt_tokens")).alias("input_tokens")


def cached_input_tokens() -> pl.Expr:
    """Cached input tokens = 0: results schema v1 has no cached-prompt-token column (all input bills as uncached)."""
    return pl.lit(0, dtype=pl.Int64).alias("cached_input_tokens")


# ---- GPU telemetry (long-form samples: run_id, source, host, device, t_s, metric, value) -------


def telemetry_values(metric: str) -> pl.Expr:
    """The sample values of one telemetry metric (e.g. gpu_util_pct), nulls dropped."""
    return pl.col("value").filter(pl.col("metric") == metric).drop_nulls()


def counter_delta() -> pl.Expr:
    """Counter increase = value at the last t_s - value at the first t_s (samples of one counter on one device)."""
    ordered = pl.col("value").sort_by("t_s")
    return (ordered.last() - ordered.first()).alias("counter_delta")


def trapezoid_integral() -> pl.Expr:
    """Integral over time = sum of (v[i] + v[i-1]) / 2 x (t[i] - t[i-1]) over consecutive samples sorted by t_s."""
    value, t = pl.col("value").sort_by("t_s"), pl.col("t_s").sort()
    return ((value + value.shift(1)) / 2 * t.diff()).sum().alias("trapezoid_integral")
