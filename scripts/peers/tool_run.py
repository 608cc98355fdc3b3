"""What one load generator did in one constant-rate run, per request, in one shape for every tool."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

WARMUP_FRACTION = 0.1  # the first tenth of the requests (by send time) open connections; left out


@dataclass
class ToolRun:
    """Per-request arrays, aligned and sorted by send time.

    `send_s`: when the tool says it sent each request, on its own clock (seconds; only differences
    matter). `own_lateness_ms`: send minus the tool's own scheduled moment, where the tool records
    its schedule (NaN where it does not). `ttft_ms`: the tool's time to first token. `itl_ms`: one
    array per request, the tool's gaps between consecutive tokens (`itl_kind == "gap"`), or the
    tool's per-request mean inter-token latency where it reports no gaps (`"request mean"`).
    `achieved_rps`: the request rate the tool itself reports (None where it reports none).
    """

    tool: str
    offered_rps: float
    scheduled: int
    send_s: np.ndarray
    own_lateness_ms: np.ndarray
    ttft_ms: np.ndarray
    itl_ms: list[np.ndarray]
    failed: int = 0
    achieved_rps: float | None = None
    itl_kind: str = "gap"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        order = np.argsort(self.send_s, kind="stable")
        self.send_s = np.asarray(self.send_s, dtype=float)[order]
        self.own_lateness_ms = np.asarray(self.own_lateness_ms, dtype=float)[order]
        self.ttft_ms = np.asarray(self.ttft_ms, dtype=float)[order]
        self.itl_ms = [np.asarray(self.itl_ms[i], dtype=float) for i in order]

    @property
    def completed(self) -> int:
        return len(self.send_s)

    def steady(self) -> ToolRun:
        """The run without its warm-up requests (the first WARMUP_FRACTION by send time)."""
        skip = int(self.completed * WARMUP_FRACTION)
        return ToolRun(
            self.tool,
            self.offered_rps,
            self.scheduled - skip,
            self.send_s[skip:],
            self.own_lateness_ms[skip:],
            self.ttft_ms[skip:],
            self.itl_ms[skip:],
            self.failed,
            self.achieved_rps,
            self.itl_kind,
            list(self.notes),
        )

    def lateness_ms(self) -> np.ndarray:
        """Send lateness by the tool's own schedule where it keeps one; else against the ideal
        constant-rate grid i / rate, anchored at the request that was least late (a lower bound)."""
        if len(self.own_lateness_ms) and not np.isnan(self.own_lateness_ms).any():
            return self.own_lateness_ms
        return grid_lateness_ms(self.send_s, self.offered_rps)

    def send_rate_rps(self) -> float:
        """Requests sent per second between the first and the last send."""
        if self.completed < 2:
            return 0.0
        return (self.completed - 1) / (self.send_s[-1] - self.send_s[0])


def grid_lateness_ms(send_s: np.ndarray, rate: float) -> np.ndarray:
    """Lateness of sorted send times against the grid t0 + i / rate, with t0 chosen so that the
    least late request is on time (lateness >= 0, and an underestimate if all were late)."""
    send_s = np.sort(np.asarray(send_s, dtype=float))
    relative = send_s - np.arange(len(send_s)) / rate
    return (relative - relative.min()) * 1000.0 if len(send_s) else relative
