"""Live progress for a replay: counters and a small running sketch of recent TTFTs.

Kept in replay/ (which never imports analysis/): it is an approximation for the live display only.
Every figure in a report is computed from the result rows by analysis/metrics/table.py.
"""

from __future__ import annotations

import collections
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

LATENESS_WARN_MS = 10.0  # the live display warns above this p99 (the report's check: analysis/summary/load_fidelity.py)
LATENESS_WARN_MIN_SENDS = 100  # ... over at least this many recent sends (a p99 of fewer is nearly their maximum)
RATE_BUCKET_S = 0.1  # completions are counted per bucket of this many seconds (RunningSketch)


@dataclass
class ProgressSnapshot:
    """One worker's (or the sum of all workers') progress at an instant."""

    scheduled: int = 0
    sent: int = 0
    done: int = 0
    in_flight: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    recent_done_per_s: float = 0.0
    recent_ttft_ms: list[float] = field(default_factory=list)
    recent_lateness_ms: list[float] = field(default_factory=list)  # of the latest first sends

    @staticmethod
    def combine(parts: list[ProgressSnapshot]) -> ProgressSnapshot:
        total = ProgressSnapshot()
        for part in parts:
            total.scheduled += part.scheduled
            total.sent += part.sent
            total.done += part.done
            total.in_flight += part.in_flight
            total.recent_done_per_s += part.recent_done_per_s
            total.recent_ttft_ms.extend(part.recent_ttft_ms)
            total.recent_lateness_ms.extend(part.recent_lateness_ms)
            for status, count in part.by_status.items():
                total.by_status[status] = total.by_status.get(status, 0) + count
        return total

    @property
    def ttft_p50_ms(self) -> float | None:
        return statistics.median(self.recent_ttft_ms) if self.recent_ttft_ms else None

    @property
    def lateness_p99_ms(self) -> float | None:
        """p99 of the recent sends' lateness (numpy's linear percentile, as the report's)."""
        return float(np.percentile(self.recent_lateness_ms, 99)) if self.recent_lateness_ms else None

    @property
    def behind_schedule(self) -> bool:
        """The client is sending late: recent lateness p99 above LATENESS_WARN_MS, over at least
        LATENESS_WARN_MIN_SENDS sends."""
        p99 = self.lateness_p99_ms
        return len(self.recent_lateness_ms) >= LATENESS_WARN_MIN_SENDS and p99 is not None and p99 > LATENESS_WARN_MS

    @property
    def errors(self) -> int:
        return sum(count for status, count in self.by_status.items() if status != "ok")


class RunningSketch:
    """Counters updated by a worker's event loop; `snapshot()` may be called from another thread.

    Cheap on both sides, because a snapshot is taken on the worker's own core while it sends (a
    Ray actor's progress call holds the GIL, and the event loop waits for it): completions are
    counted in `RATE_BUCKET_S` buckets (`on_done` adds to the newest, a snapshot sums the last
    `rate_window_s` of them), so neither grows with the request rate; only the bounded TTFT and
    lateness samples are copied."""

    def __init__(
        self, scheduled: int, rate_window_s: float = 5.0, ttft_samples: int = 256, lateness_samples: int = 512
    ):
        self.scheduled = scheduled
        self.sent = 0
        self.done = 0
        self.by_status: collections.Counter[str] = collections.Counter()
        buckets = int(round(rate_window_s / RATE_BUCKET_S)) + 1
        self._done_buckets: collections.deque[list[int]] = collections.deque(maxlen=buckets)  # [bucket, count]
        self._ttfts: collections.deque[float] = collections.deque(maxlen=ttft_samples)
        self._lateness: collections.deque[float] = collections.deque(maxlen=lateness_samples)
        self._rate_window_s = rate_window_s

    def on_sent(self) -> None:
        self.sent += 1

    def on_first_send(self, lateness_ms: float | None) -> None:
        """A request's first attempt went out `lateness_ms` after its scheduled moment (None: never sent)."""
        if lateness_ms is not None:
            self._lateness.append(lateness_ms)

    def on_done(self, status: str, ttft_ms: float | None) -> None:
        self.done += 1
        self.by_status[status] += 1
        bucket = int(time.monotonic() / RATE_BUCKET_S)
        buckets = self._done_buckets
        if buckets and buckets[-1][0] == bucket:
            buckets[-1][1] += 1
        else:
            buckets.append([bucket, 1])  # the deque's maxlen drops the oldest
        if ttft_ms is not None:
            self._ttfts.append(ttft_ms)

    def snapshot(self) -> ProgressSnapshot:
        oldest = int((time.monotonic() - self._rate_window_s) / RATE_BUCKET_S)
        recent = sum(count for bucket, count in list(self._done_buckets) if bucket > oldest)
        return ProgressSnapshot(
            scheduled=self.scheduled,
            sent=self.sent,
            done=self.done,
            in_flight=self.sent - self.done,
            by_status=dict(self.by_status),
            recent_done_per_s=recent / self._rate_window_s,
            recent_ttft_ms=list(self._ttfts),
            recent_lateness_ms=list(self._lateness),
        )
