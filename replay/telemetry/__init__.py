"""Telemetry taken beside a replay: GPU counters through NVML and server metrics from Prometheus
endpoints, written to RUN_DIR/telemetry/ as long-form rows (replay/schemas/telemetry.py).

Both samplers are plain classes with `start(clock)`, `flush()`, `stop()` and `stats()`, sampling on
a thread of their own. The runner runs the Prometheus sampler in its own process; NVML runs in one
Ray actor on every node with GPUs (gpu_node_samplers.py), each mapping its own clock to the run's epoch.
"""

from __future__ import annotations

from typing import Protocol


class RunClock(Protocol):
    """Maps a time.perf_counter() reading of this process to seconds on the run's timeline.

    shadowreplay.replay.run.worker.ClockMapping is one; build it in the process that samples (perf_counter
    readings do not travel between hosts).
    """

    def to_run_s(self, perf: float) -> float: ...
