"""How long a provider asks us to wait, read from its rate-limit headers when Retry-After is absent.

Providers say when a limit frees up in headers of their own, on every response and on a 429:
- OpenAI and the OpenAI-compatible providers that copy it (Groq, Together, Fireworks, Azure):
  `x-ratelimit-remaining-requests` / `x-ratelimit-reset-requests` and the same for `-tokens`,
  the reset being a Go-style duration such as `1s`, `6m0s`, `20ms` or `2m59.56s`; some send a bare
  number of seconds, and a few (`x-ratelimit-reset`) a Unix time.
- Anthropic: `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{remaining,reset}`,
  the reset being an RFC 3339 timestamp.

Retry-After (and `retry-after-ms`) stay the first choice (replay/clients/stream_client.py reads them); this
module answers only when they are absent. Which limit was hit is not said on a 429, so the rule is:
the latest reset among the limits whose `remaining` is 0; when no remaining count is 0 (or none is
given), the earliest reset of any limit (the soonest moment something frees up). Never negative.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

# (remaining header, reset header) pairs, one per limit.
LIMIT_HEADERS: tuple[tuple[str, str], ...] = (
    ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    ("x-ratelimit-remaining", "x-ratelimit-reset"),
    *(
        (f"anthropic-ratelimit-{limit}-remaining", f"anthropic-ratelimit-{limit}-reset")
        for limit in ("requests", "tokens", "input-tokens", "output-tokens")
    ),
)

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_UNIX_TIME_FLOOR = 1e9  # a bare number this large is a Unix time (2001 on), not a delay


@dataclass(frozen=True, slots=True)
class LimitReset:
    """One limit's state as the headers give it: seconds until it resets, and what is left."""

    reset_s: float
    remaining: float | None


def parse_reset(value: str, now: datetime) -> float | None:
    """Seconds from `now` until the reset named by `value`: a Go-style duration (`6m0s`, `20ms`),
    a number of seconds, a Unix time, or an RFC 3339 timestamp. None when unreadable."""
    value = value.strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        return number - now.timestamp() if number >= _UNIX_TIME_FLOOR else number
    parts = _DURATION_PART.findall(value)
    if parts and "".join(n + u for n, u in parts) == value:
        return sum(float(n) * _UNIT_S[u] for n, u in parts)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - now).total_seconds()


def limit_resets(headers: Mapping[str, str], now: datetime | None = None) -> list[LimitReset]:
    """Every limit whose reset header is present and readable."""
    now = now or datetime.now(UTC)
    resets = []
    for remaining_name, reset_name in LIMIT_HEADERS:
        raw = headers.get(reset_name)
        reset_s = parse_reset(raw, now) if raw is not None else None
        if reset_s is None:
            continue
        remaining = None
        raw_remaining = headers.get(remaining_name)
        if raw_remaining is not None:
            try:
                remaining = float(raw_remaining)
            except ValueError:
                remaining = None
        resets.append(LimitReset(reset_s, remaining))
    return resets


def rate_limit_wait_s(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds to wait before trying again by the provider's rate-limit headers (rule in the module
    docstring); None when no reset header is present."""
    resets = limit_resets(headers, now)
    if not resets:
        return None
    exhausted = [r.reset_s for r in resets if r.remaining is not None and r.remaining <= 0]
    wait = max(exhausted) if exhausted else min(r.reset_s for r in resets)
    return max(0.0, wait)
