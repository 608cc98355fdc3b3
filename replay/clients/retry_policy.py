"""When a failed attempt is tried again, and after how long.

Each attempt is its own result row (`attempt` 1, 2, ...; `final` on the last), so a report can
count retries and the latency from the scheduled time shows the waiting honestly.

A retry budget keeps a storm of 429s from multiplying the load: within any minute a target may
retry at most `min_per_minute + ratio x (requests first sent in that minute)` times (the shape of
Finagle's and gRPC's retry budgets). A retry the budget refuses leaves that attempt final, and its
error says so.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from shadowreplay.replay.schemas.results import StreamOutcome

BUDGET_WINDOW_S = 60.0
BUDGET_EXHAUSTED = "not retried: retry budget exhausted"


class RetryBudgetConfig(BaseModel):
    """At most `min_per_minute + ratio x requests` retries in any minute, for the whole run."""

    model_config = ConfigDict(extra="forbid")
    ratio: float = Field(default=0.1, ge=0, description="retries allowed per request sent in the same minute")
    min_per_minute: float = Field(default=10.0, ge=0, description="retries allowed per minute whatever the traffic")


class RetryPolicy(BaseModel):
    """Retries for rate limiting and overload: HTTP 429, 503 and 529 (Anthropic's 'overloaded').

    The delay is the server's wait when it gives one, capped at `max_delay_s`: Retry-After (or
    retry-after-ms), else the provider's rate-limit reset headers (replay/clients/rate_limit_headers.py);
    without either, exponential backoff `backoff_s * 2**(attempt-1)`. `max_attempts` 1 means no
    retry. `budget` (none by default) caps retries per minute for the target.
    """

    model_config = ConfigDict(extra="forbid")
    max_attempts: int = Field(default=1, ge=1)
    retry_statuses: list[int] = Field(default_factory=lambda: [429, 503, 529])
    backoff_s: float = Field(default=1.0, ge=0)
    max_delay_s: float = Field(default=60.0, ge=0)
    honour_retry_after: bool = True
    budget: RetryBudgetConfig | None = None

    def delay_before_retry(self, outcome: StreamOutcome, attempt: int) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None when `outcome` is final."""
        if attempt >= self.max_attempts:
            return None
        if outcome.status != "http_error" or outcome.http_status not in self.retry_statuses:
            return None
        if self.honour_retry_after and outcome.retry_after_s is not None:
            return min(outcome.retry_after_s, self.max_delay_s)
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_delay_s)


class RetryBudget:
    """The running retry budget of one target in one worker (`share` = this worker's part of
    `min_per_minute`; the ratio applies to the worker's own requests). No config: no limit."""

    def __init__(
        self,
        config: RetryBudgetConfig | None,
        share: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.config = config
        self.share = share
        self.clock = clock
        self._requests: deque[float] = deque()  # times of first attempts in the window
        self._retries: deque[float] = deque()  # times of granted retries in the window
        self.refused = 0

    def _trim(self, now: float) -> None:
        for times in (self._requests, self._retries):
            while times and times[0] <= now - BUDGET_WINDOW_S:
                times.popleft()

    def on_request(self) -> None:
        """A request's first attempt is about to go (it earns `ratio` retries for a minute)."""
        if self.config is not None:
            now = self.clock()
            self._trim(now)
            self._requests.append(now)

    def allow_retry(self) -> bool:
        """Whether one more retry fits in the budget now; a granted retry is counted."""
        if self.config is None:
            return True
        now = self.clock()
        self._trim(now)
        allowance = self.config.min_per_minute * self.share + self.config.ratio * len(self._requests)
        if len(self._retries) + 1 > allowance:
            self.refused += 1
            return False
        self._retries.append(now)
        return True
