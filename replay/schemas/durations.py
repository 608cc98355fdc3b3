"""Durations as configs and flags spell them: '90', '90s', '1.5m', '250ms', '2h' (a number of seconds,
optionally with a unit). One parser for every verb and config file (--duration, --window, a gates file's
`window`), so that each reads the same spellings."""

from __future__ import annotations

import re

from shadowreplay.errors import ShadowReplayError

_DURATION = re.compile(r"^\s*((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class DurationError(ShadowReplayError, ValueError):
    """A duration that is not a number of seconds with an optional unit."""


def parse_duration_s(text: str, what: str = "duration") -> float:
    """'90', '90s', '1.5m', '250ms', '2h' -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise DurationError(f"{what} {text!r}: expected a number of seconds, optionally with ms, s, m or h")
    return float(match.group(1)) * _UNIT_S[match.group(2)]
