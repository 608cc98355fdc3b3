"""Client-side rate limits (token buckets, first come first served), retry budgets, and the waits
read from providers' rate-limit headers. Arithmetic is checked on a fake clock; one test checks
that `acquire` really waits (a lower bound only)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from shadowreplay.replay.clients.rate_limit_headers import parse_reset, rate_limit_wait_s
from shadowreplay.replay.clients.rate_limiter import RateLimiter, RateLimits, TokenBucket, estimated_tokens
from shadowreplay.replay.clients.retry_policy import RetryBudget, RetryBudgetConfig, RetryPolicy
from shadowreplay.replay.schemas.results import StreamOutcome


class FakeClock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- rate limiter ---------------------------------------------------------------------------------
def test_requests_per_minute_after_the_burst_go_at_the_limit():
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(rpm=120, burst_s=1.0), clock=clock)  # 2/s, bucket of 2
    starts = [limiter.reserve(0) - clock.t for _ in range(6)]
    assert starts == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.5, 2.0])


def test_a_quiet_spell_refills_the_bucket_but_never_past_its_capacity():
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(rpm=60, burst_s=3.0), clock=clock)  # 1/s, bucket of 3
    assert [limiter.reserve(0) for _ in range(3)] == [100.0] * 3
    clock.t += 100.0  # far more than needed to refill 3
    starts = [limiter.reserve(0) - clock.t for _ in range(5)]
    assert starts == pytest.approx([0.0, 0.0, 0.0, 1.0, 2.0])


def test_tokens_per_minute_and_requests_bigger_than_the_bucket():
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(tpm=6000, burst_s=1.0), clock=clock)  # 100 tokens/s, bucket of 100
    assert limiter.reserve(60) == 100.0
    assert limiter.reserve(60) == pytest.approx(100.2)  # 40 left: 20 more tokens take 0.2 s
    # 500 tokens (more than the bucket) wait for a full bucket and leave a debt of 400 ...
    assert limiter.reserve(500) == pytest.approx(101.2)
    # ... which the next request waits out: 400 + its own 10 at 100/s.
    assert limiter.reserve(10) == pytest.approx(101.2 + 4.1)


def test_both_limits_apply_and_the_later_one_decides():
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(rpm=600, tpm=600, burst_s=1.0), clock=clock)  # 10 req/s, 10 tok/s
    assert limiter.reserve(10) == 100.0
    assert limiter.reserve(10) == pytest.approx(101.0)  # the token bucket is the bottleneck
    assert limiter.reserve(0) == pytest.approx(
        101.0
    )  # no tokens: only the request bucket, but not before earlier bookings


def test_a_worker_share_divides_the_limits():
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(rpm=120, burst_s=1.0), share=0.5, clock=clock)  # 1/s, bucket of 1
    assert [limiter.reserve(0) - 100.0 for _ in range(3)] == pytest.approx([0.0, 1.0, 2.0])


def test_no_limits_never_wait():
    limiter = RateLimiter(None)
    assert not limiter.limited and asyncio.run(limiter.acquire(10**9)) == 0.0


def test_acquire_really_waits_in_booking_order():
    limiter = RateLimiter(RateLimits(rpm=600, burst_s=0.1))  # 10/s, bucket of 1

    async def go() -> tuple[list[float], list[int]]:
        started = time.perf_counter()
        order: list[int] = []

        async def one(i: int) -> float:
            await limiter.acquire()
            order.append(i)
            return time.perf_counter() - started

        return await asyncio.gather(*(one(i) for i in range(4))), order

    waited, order = asyncio.run(go())
    assert order == [0, 1, 2, 3]
    for i, t in enumerate(waited):
        assert t >= 0.1 * i - 1e-3


def test_token_bucket_rejects_nonsense_and_estimates_count_unknowns_as_zero():
    with pytest.raises(ValueError):
        TokenBucket(0, 1, 0.0)
    assert estimated_tokens(None, 7) == 7 and estimated_tokens(3, None) == 3


# -- retry budget ---------------------------------------------------------------------------------
def test_retry_budget_allows_a_floor_plus_a_ratio_of_requests_per_minute():
    clock = FakeClock()
    budget = RetryBudget(RetryBudgetConfig(ratio=0.5, min_per_minute=1), clock=clock)
    for _ in range(4):
        budget.on_request()
    assert [budget.allow_retry() for _ in range(4)] == [True, True, True, False]  # 1 + 0.5 x 4 = 3
    assert budget.refused == 1
    clock.t += 61.0  # the window has passed: requests and retries forgotten
    assert budget.allow_retry() and not budget.allow_retry()  # only the floor of 1 is left


def test_retry_budget_share_and_no_budget():
    budget = RetryBudget(RetryBudgetConfig(ratio=0.0, min_per_minute=4), share=0.5, clock=FakeClock())
    assert [budget.allow_retry() for _ in range(3)] == [True, True, False]
    unlimited = RetryBudget(None)
    assert all(unlimited.allow_retry() for _ in range(1000))


def test_retry_policy_uses_the_servers_wait_then_backoff():
    policy = RetryPolicy(max_attempts=3, backoff_s=0.5, max_delay_s=10)
    limited = StreamOutcome(status="http_error", http_status=429, retry_after_s=2.5)
    assert policy.delay_before_retry(limited, 1) == 2.5
    assert policy.delay_before_retry(StreamOutcome(status="http_error", http_status=529), 2) == 1.0
    assert policy.delay_before_retry(limited, 3) is None  # attempts used up
    assert policy.delay_before_retry(StreamOutcome(status="http_error", http_status=401), 1) is None
    assert policy.delay_before_retry(StreamOutcome(status="http_error", http_status=429, retry_after_s=99), 1) == 10


# -- providers' rate-limit headers ----------------------------------------------------------------
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("2m59.56s", 179.56),
        ("1h2m3s", 3723.0),
        ("7.66s", 7.66),
        ("12", 12.0),
        ("0.5", 0.5),
        (str(int(NOW.timestamp()) + 30), 30.0),  # a Unix time
        ("2025-06-01T12:00:05Z", 5.0),
        ("2025-06-01T12:00:01.250000+00:00", 1.25),
    ],
)
def test_reset_values(value, seconds):
    assert parse_reset(value, NOW) == pytest.approx(seconds)


def test_unreadable_resets_are_none():
    assert parse_reset("soon", NOW) is None and parse_reset("", NOW) is None and parse_reset("5 s", NOW) is None


def test_openai_headers_the_exhausted_limit_decides():
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "1200",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert rate_limit_wait_s(headers, NOW) == 1.0
    headers["x-ratelimit-remaining-tokens"] = "0"
    assert rate_limit_wait_s(headers, NOW) == 360.0  # both exhausted: wait for the later


def test_anthropic_headers_and_the_earliest_reset_when_nothing_is_exhausted():
    reset = (NOW + timedelta(seconds=3)).isoformat().replace("+00:00", "Z")
    later = (NOW + timedelta(seconds=40)).isoformat().replace("+00:00", "Z")
    headers = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": reset,
        "anthropic-ratelimit-tokens-remaining": "5000",
        "anthropic-ratelimit-tokens-reset": later,
    }
    assert rate_limit_wait_s(headers, NOW) == pytest.approx(3.0)
    headers["anthropic-ratelimit-requests-remaining"] = "4"
    assert rate_limit_wait_s(headers, NOW) == pytest.approx(3.0)  # none exhausted: the soonest
    past = (NOW - timedelta(seconds=5)).isoformat()
    assert rate_limit_wait_s({"anthropic-ratelimit-requests-reset": past}, NOW) == 0.0
    assert rate_limit_wait_s({"content-type": "application/json"}, NOW) is None
