"""Client-side request-per-minute and token-per-minute limits of one target (`rate_limits:`).

A hosted API enforces quotas; a replay that ignores them measures 429s, not the model. A target's
`rate_limits: {rpm: 500, tpm: 200000}` makes every worker pace its sends to stay within them, and
the wait is part of the measurement: the worker awaits the limiter before each attempt and takes
`sent` after it, so latency from the scheduled time (and `lateness_ms`) shows the queueing that a
client under that quota would see.

Each limit is a token bucket (as the providers describe theirs): it refills continuously at
limit/60 per second and holds at most `burst_s` seconds' worth (at least one request), so after a
quiet spell a short burst may go at once and a steady stream goes at the limit. A request costs one
request and its estimated tokens: the prompt tokens plus the output tokens it asks for (as OpenAI
counts against TPM at request time). A request larger than the token bucket waits for a full
bucket and leaves it in debt, so the average rate still holds.

Reservations are first come, first served: `acquire` books the earliest moment at which every
bucket allows the request, after all earlier bookings, debits the buckets at that moment, and
sleeps until then. There is no lock: booking is synchronous on the worker's event loop.

With several workers each enforces an equal share (`share=1/workers`), so the run as a whole stays
within the configured limits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator

SECONDS_PER_MINUTE = 60.0


class RateLimits(BaseModel):
    """A target's client-side limits for the whole run (all workers together)."""

    model_config = ConfigDict(extra="forbid")
    rpm: float | None = Field(default=None, gt=0, description="requests per minute")
    tpm: float | None = Field(default=None, gt=0, description="tokens (prompt + requested output) per minute")
    burst_s: float = Field(default=1.0, gt=0, description="each bucket holds this many seconds of its limit")

    @model_validator(mode="after")
    def _some_limit(self) -> RateLimits:
        if self.rpm is None and self.tpm is None:
            raise ValueError("give rpm, tpm or both")
        return self


def estimated_tokens(prompt_tokens: int | None, completion_tokens: int | None) -> int:
    """What a request costs against a TPM limit: prompt plus requested output tokens (unknowns as 0)."""
    return (prompt_tokens or 0) + (completion_tokens or 0)


class TokenBucket:
    """A bucket refilling at `rate` per second up to `capacity`, with bookings in time order.

    The state is the level at `stamp` (seconds on the limiter's clock); `stamp` may lie in the
    future when a booking was made for later, and no later booking goes before it.
    """

    __slots__ = ("rate", "capacity", "level", "stamp")

    def __init__(self, rate: float, capacity: float, now: float):
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.stamp = now

    def _level_at(self, t: float) -> float:
        return min(self.capacity, self.level + self.rate * (t - self.stamp))

    def earliest(self, cost: float, now: float) -> float:
        """The first moment, not before `now` nor before the last booking, holding `cost`
        (or a full bucket, for a cost above the capacity)."""
        t = max(now, self.stamp)
        need = min(cost, self.capacity)
        level = self._level_at(t)
        return t if level >= need else t + (need - level) / self.rate

    def book(self, cost: float, at: float) -> None:
        """Take `cost` at `at` (>= the last booking); the level may go below zero (a debt)."""
        self.level = self._level_at(at) - cost
        self.stamp = at


class RateLimiter:
    """The limits of one target in one worker. `acquire(tokens)` returns once the request may go.

    `limits` None means no limit (acquire returns at once). `share` is this worker's part of the
    limits (1/workers). `clock` is the worker's monotonic clock.
    """

    def __init__(
        self,
        limits: RateLimits | None,
        share: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
    ):
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.clock = clock
        self.requests: TokenBucket | None = None
        self.tokens: TokenBucket | None = None
        if limits is None:
            return
        now = clock()
        if limits.rpm is not None:
            per_s = limits.rpm * share / SECONDS_PER_MINUTE
            self.requests = TokenBucket(per_s, max(1.0, per_s * limits.burst_s), now)
        if limits.tpm is not None:
            per_s = limits.tpm * share / SECONDS_PER_MINUTE
            self.tokens = TokenBucket(per_s, max(1.0, per_s * limits.burst_s), now)

    @property
    def limited(self) -> bool:
        return self.requests is not None or self.tokens is not None

    def reserve(self, tokens: int) -> float:
        """Book the earliest moment (on `clock`) at which a request of `tokens` may go, and return it."""
        now = self.clock()
        start = now
        if self.requests is not None:
            start = max(start, self.requests.earliest(1, now))
        if self.tokens is not None and tokens > 0:
            start = max(start, self.tokens.earliest(tokens, now))
        if self.requests is not None:
            self.requests.book(1, start)
        if self.tokens is not None and tokens > 0:
            self.tokens.book(tokens, start)
        return start

    async def acquire(self, tokens: int = 0) -> float:
        """Wait until a request of `tokens` estimated tokens may go; returns the seconds waited.
        A cancelled wait keeps its booking (the limiter errs on the slow side)."""
        if not self.limited:
            return 0.0
        now = self.clock()
        start = self.reserve(tokens)
        while (left := start - self.clock()) > 0:  # the event loop's timer may wake early
            await asyncio.sleep(left)
        return max(0.0, start - now)
