"""The demand a fleet must serve: a traffic log's arrivals scaled to a volume, as rates over windows.

Definitions (`DEFINITIONS` carries them into plan.json):
- factor: the target volume as a factor of the log's own (analysis/capacity/traffic_volume.py); the
  demand is the log's arrival pattern at factor x its rate (as `replay --volume` offers it).
- window rate: requests arriving in a window of `window_s` seconds / window_s, x factor, for windows
  sliding in steps of window_s / SUB_BINS from the first arrival (counts of SUB_BINS consecutive
  sub-bins); mean = factor x (n - 1) / span, peak = the largest window rate (at least the mean: a log
  that ends inside a burst has a mean above its whole windows'), peak-to-average their ratio. A log
  shorter than one window has one window: the whole log (peak = mean).
- window length (`default_window_s`): short enough for the SLO to notice an overload. A fleet loaded
  (1 + e) times past its capacity for T seconds builds a backlog of e x T seconds of work, which every
  request behind it waits for; the SLO notices once that wait reaches its threshold. So the default
  is the time a 10% overload (OVERLOAD) takes to add the tightest TTFT or e2e threshold: threshold /
  0.1, at least 1 s (below that a window's count is noise) and at most the sweep's point length (the
  time over which the SLO capacity was measured). Without such an SLO (TPOT only: a batch slows at
  once with its load, no backlog builds), the point length. A longer window averages away overloads
  the SLO notices (a 20 s burst at 1.6x the mean disappears in 40 s windows that span a lull too);
  a shorter one counts bursts the queue absorbs.
- hourly peaks: per hour of the log from its first arrival (the last one partial), the largest
  window rate inside it: what an autoscaled fleet following the demand hour by hour must serve.
- monthly tokens: the log's prompt and completion tokens / span x 30 days x factor.
- window_rates (for the plan's page): at most CURVE_POINTS points, each the largest window rate of
  its span of windows, so no peak is lost to the thinning.
Computed in one pass over the log's arrival times and token counts, a batch at a time (numpy's
bincount of each batch's sub-bins; the first arrival from the row groups' statistics), so a log of
millions of rows costs one read of three columns, never its rows in memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shadowreplay.analysis.capacity.traffic_volume import LogVolume, TrafficVolume
from shadowreplay.analysis.metrics.slo import Slo
from shadowreplay.analysis.summary.traffic_stats import SECONDS_PER_MONTH
from shadowreplay.errors import UserError
from shadowreplay.replay.schemas.traffic_log import TrafficLog, open_traffic_log

SUB_BINS = 10  # window steps per window length
OVERLOAD = 0.10  # the overload the default window lets the SLO notice (default_window_s)
MIN_WINDOW_S = 1.0
QUEUEING_METRICS = ("ttft", "e2e")  # latencies that a backlog adds to
HOUR_S = 3600.0
CURVE_POINTS = 1000  # the window rates kept for the plan's page: the largest of each of this many spans

DEFINITIONS = {
    "window_rate": "requests arriving in a window of window_s / window_s x factor, windows sliding in steps of "
    f"window_s / {SUB_BINS} from the first arrival; mean = factor x (n - 1) / span, peak = the largest (at least "
    "the mean)",
    "window_s": f"by default the tightest TTFT or e2e SLO threshold / {OVERLOAD:g} (the time a {OVERLOAD:.0%} overload "
    f"takes to add that much wait), at least {MIN_WINDOW_S:g} s and at most the sweep's point length; the point "
    "length without such an SLO",
    "hourly_peaks": "per hour of the log from its first arrival, the largest window rate inside it",
    "monthly_tokens": "the log's prompt and completion tokens / span x 30 days x factor",
}


@dataclass(frozen=True)
class Demand:
    """The demand at a volume (module docstring); rates in requests/s."""

    log: str
    volume: str  # as given, or "1x" (the log's own)
    factor: float
    window_s: float
    requests: int  # the log's
    span_s: float
    mean_rps: float
    peak_rps: float
    hourly_peak_rps: tuple[float, ...]
    monthly_prompt_tokens: float
    monthly_completion_tokens: float
    curve_t_s: tuple[float, ...] = ()  # window start (s from the first arrival) of each curve point
    curve_rps: tuple[float, ...] = ()  # the largest window rate from there to the next point

    @property
    def peak_to_average(self) -> float:
        return self.peak_rps / self.mean_rps if self.mean_rps > 0 else math.nan

    @property
    def monthly_tokens(self) -> float:
        return self.monthly_prompt_tokens + self.monthly_completion_tokens

    def at(self, factor: float) -> Demand:
        """The same pattern at `factor` times this demand (every rate and token count scales)."""
        return Demand(
            self.log,
            f"{self.factor * factor:g}x",
            self.factor * factor,
            self.window_s,
            self.requests,
            self.span_s,
            self.mean_rps * factor,
            self.peak_rps * factor,
            tuple(rate * factor for rate in self.hourly_peak_rps),
            self.monthly_prompt_tokens * factor,
            self.monthly_completion_tokens * factor,
            self.curve_t_s,
            tuple(rate * factor for rate in self.curve_rps),
        )

    def json_dict(self) -> dict:
        return {
            "log": self.log,
            "volume": self.volume,
            "factor": self.factor,
            "window_s": self.window_s,
            "log_requests": self.requests,
            "log_span_s": self.span_s,
            "mean_rps": self.mean_rps,
            "peak_rps": self.peak_rps,
            "peak_to_average": self.peak_to_average,
            "hourly_peak_rps": list(self.hourly_peak_rps),
            "monthly_tokens": self.monthly_tokens,
            "monthly_prompt_tokens": self.monthly_prompt_tokens,
            "monthly_completion_tokens": self.monthly_completion_tokens,
            "window_rates": {"t_s": list(self.curve_t_s), "rps": list(self.curve_rps)},
            "definitions": DEFINITIONS,
        }


def default_window_s(slos: Sequence[Slo], point_s: float) -> float:
    """The demand window for `slos` when a sweep's points last `point_s` (module docstring)."""
    thresholds = [slo.threshold_ms / 1000.0 for slo in slos if slo.metric in QUEUEING_METRICS]
    if not thresholds:
        return point_s
    return min(max(min(thresholds) / OVERLOAD, MIN_WINDOW_S), point_s)


def sliding_peaks(sub_counts: np.ndarray, sub_bins: int) -> np.ndarray:
    """Counts of every run of `sub_bins` consecutive sub-bins (all of them where there are fewer)."""
    if len(sub_counts) <= sub_bins:
        return np.array([sub_counts.sum()])
    cumulative = np.concatenate([[0], np.cumsum(sub_counts)])
    return cumulative[sub_bins:] - cumulative[:-sub_bins]


BATCH_ROWS = 1 << 20  # rows read at a time: the pass holds one batch of three columns, not the log


def _arrival_counts(pf: TrafficLog, sub_us: int) -> tuple[int, int, int, int, int, np.ndarray]:
    """(rows, first and last arrival in us, prompt and completion tokens, arrivals per sub-bin of `sub_us`
    from the first arrival), in one pass over the three columns, batch by batch (numpy's bincount of each
    batch's sub-bins). The first arrival comes from the row groups' statistics where the file has them,
    else from a pass over arrival_time alone."""
    ranges = pf.arrival_time_ranges() if pf.schema_arrow.field("arrival_time").type.unit == "us" else None
    known = [r for r in ranges or [] if r is not None]
    if ranges is not None and known:
        first = min(low for low, _ in known)
    else:
        lows = [_micros(batch.column(0)).min() for batch in pf.iter_batches(BATCH_ROWS, columns=["arrival_time"])]
        if not lows:
            return 0, 0, 0, 0, 0, np.zeros(0, dtype=np.int64)
        first = int(min(lows))
    counts = np.zeros(0, dtype=np.int64)
    rows, last, prompt, completion, used = 0, first, 0, 0, 0
    for batch in pf.iter_batches(BATCH_ROWS, columns=["arrival_time", "prompt_tokens", "completion_tokens"]):
        if batch.num_rows == 0:
            continue
        micros = _micros(batch.column(0))
        bins = (micros - first) // sub_us
        low = int(bins.min())  # a batch of a log in arrival order spans a few of the bins: count only those
        found = np.bincount(bins - low)
        end = low + len(found)
        if end > len(counts):
            counts = np.concatenate([counts, np.zeros(max(end, 2 * len(counts)) - len(counts), dtype=np.int64)])
        counts[low:end] += found
        used = max(used, end)
        rows += batch.num_rows
        last = max(last, int(micros.max()))
        prompt += int(pc.sum(batch.column(1)).as_py() or 0)
        completion += int(pc.sum(batch.column(2)).as_py() or 0)
    return rows, first, last, prompt, completion, counts[:used]


def _micros(column: pa.Array) -> np.ndarray:
    """A timestamp column as int64 microseconds since the epoch (arrival_time is never null: the contract)."""
    if column.type.unit != "us":  # the contract's unit needs no conversion (a cast of the tz'd type costs)
        column = column.cast(pa.timestamp("us", tz=column.type.tz))
    return column.cast(pa.int64()).to_numpy(zero_copy_only=False)


def demand(log: str | Path, window_s: float, volume: TrafficVolume | None = None) -> Demand:
    """The demand of the traffic log at `path` at `volume` (default: its own), over windows of `window_s`."""
    if window_s <= 0:
        raise UserError(f"--window must be positive, got {window_s:g} s")
    pf = open_traffic_log(log)  # a file that is no traffic log is one clear error
    sub_s = window_s / SUB_BINS
    n, first, last, prompt, completion, sub_counts = _arrival_counts(pf, int(round(sub_s * 1e6)))
    if not n:
        raise UserError(f"{log}: the traffic log has no rows")
    span_s = (last - first) / 1e6
    own = LogVolume(n, span_s, prompt, completion)
    factor = volume.factor(own) if volume is not None else 1.0
    if own.rate_rps is None:
        raise UserError(f"{log}: every arrival is at one instant; the log has no rate to plan for")
    windows = sliding_peaks(sub_counts, SUB_BINS)
    if len(sub_counts) <= SUB_BINS:  # shorter than a window: the whole log is the one window
        window_rates = np.array([own.rate_rps])
    else:
        window_rates = windows / window_s
    # window w covers sub-bins w .. w + SUB_BINS - 1: it belongs to the hour it starts in
    starts_s = np.arange(len(window_rates)) * sub_s
    hours = (starts_s // HOUR_S).astype(np.int64)
    hourly = np.zeros(hours.max() + 1)
    np.maximum.at(hourly, hours, window_rates)
    to_month = SECONDS_PER_MONTH / span_s if span_s > 0 else 0.0
    step = max(1, math.ceil(len(window_rates) / CURVE_POINTS))
    curve = np.maximum.reduceat(window_rates, np.arange(0, len(window_rates), step))
    return Demand(
        log=str(log),
        volume=volume.spec if volume is not None else "1x",
        factor=factor,
        window_s=window_s,
        requests=int(n),
        span_s=span_s,
        mean_rps=own.rate_rps * factor,
        peak_rps=max(float(window_rates.max()), own.rate_rps) * factor,
        hourly_peak_rps=tuple(float(rate) * factor for rate in hourly),
        monthly_prompt_tokens=own.prompt_tokens * to_month * factor,
        monthly_completion_tokens=own.completion_tokens * to_month * factor,
        curve_t_s=tuple(float(t) for t in starts_s[::step]),
        curve_rps=tuple(float(rate) * factor for rate in curve),
    )
