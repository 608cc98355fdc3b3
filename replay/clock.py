"""The run's clock mapping: one process's perf_counter seconds onto the run's shared timeline.

Every timing in a replay process is taken with `time.perf_counter()` (monotonic, sub-microsecond).
Each process measures once, when it starts, the offset between its wall clock and its perf_counter
(`measure_wall_minus_perf`); with the run's start epoch (a wall-clock second shared by every
process of the run) that gives

    t_run = perf + (wall - perf) - epoch

so all processes of a run, on any host whose wall clock is synchronised, share one `*_s` axis:
seconds since the run's start. Used by the runner (to place the epoch), the replay workers (to
wait for scheduled moments and to stamp result rows) and the telemetry samplers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import overload


@dataclass(frozen=True)
class ClockMapping:
    """perf_counter -> seconds on the run's timeline: t_run = perf + wall_minus_perf - epoch."""

    wall_minus_perf: float  # time.time() - time.perf_counter(), taken where the read pair was tightest
    epoch: float  # wall-clock second at which the run's timeline starts

    @staticmethod
    def measure_wall_minus_perf(samples: int = 25) -> float:
        """time.time() - time.perf_counter(), from the tightest of `samples` perf/wall/perf reads
        (the wall read is paired with the midpoint of the two perf reads around it)."""
        best_gap, best = float("inf"), 0.0
        for _ in range(samples):
            p0 = time.perf_counter()
            wall = time.time()
            p1 = time.perf_counter()
            if p1 - p0 < best_gap:
                best_gap, best = p1 - p0, wall - (p0 + p1) / 2
        return best

    @overload
    def to_run_s(self, perf: float) -> float: ...
    @overload
    def to_run_s(self, perf: None) -> None: ...
    @overload
    def to_run_s(self, perf: float | None) -> float | None: ...
    def to_run_s(self, perf: float | None) -> float | None:
        """perf_counter seconds -> run seconds (None stays None)."""
        return None if perf is None else perf + self.wall_minus_perf - self.epoch

    def to_perf(self, run_s: float) -> float:
        """Run seconds -> this process's perf_counter seconds (the inverse of `to_run_s`)."""
        return run_s + self.epoch - self.wall_minus_perf
