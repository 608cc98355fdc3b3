"""The replay plan: which rows of a traffic log are sent, when, and with what length limits.

A plan is a pyarrow Table of the traffic-log columns plus `scheduled_s` (seconds from the run's
start), `expected_prompt_tokens`, `expected_completion_tokens` and `clamped`, in send order.
Send times come from a load shape (loadgen) or from the log's own arrival times; the plan only
selects, clamps and splits rows, so the runner never needs to know which.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.schemas.traffic_log import read_traffic_log

_DURATION = re.compile(r"^\s*((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class PlanError(ShadowReplayError, ValueError):
    """A replay selection that cannot be honoured (bad window, nothing left to send)."""


def parse_duration_s(text: str, what: str = "duration") -> float:
    """'90', '90s', '1.5m', '250ms', '2h' -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise PlanError(f"{what} {text!r}: expected a number of seconds, optionally with ms, s, m or h")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


@dataclass(frozen=True)
class Window:
    """A slice of the log by arrival time, in seconds from its first arrival: [start_s, end_s)."""

    start_s: float = 0.0
    end_s: float | None = None

    @classmethod
    def parse(cls, text: str) -> Window:
        """'START..END', either side optional: '60..120', '..5m', '30s..'."""
        if ".." not in text:
            raise PlanError(f"window {text!r}: expected START..END (seconds from the first arrival)")
        start, end = text.split("..", 1)
        window = cls(
            start_s=parse_duration_s(start, "window start") if start.strip() else 0.0,
            end_s=parse_duration_s(end, "window end") if end.strip() else None,
        )
        if window.end_s is not None and window.end_s <= window.start_s:
            raise PlanError(f"window {text!r}: end must be after start")
        return window


@dataclass(frozen=True)
class LengthClamp:
    """Upper bounds on synthesized prompt and output lengths, for small models' context windows."""

    max_prompt_tokens: int | None = None
    max_completion_tokens: int | None = None


def arrival_offsets_s(table: pa.Table) -> np.ndarray:
    """Seconds of each row's arrival after the first row's arrival."""
    micros = table.column("arrival_time").cast(pa.int64()).to_numpy()
    if len(micros) == 0:
        return np.zeros(0)
    return (micros - micros.min()) / 1e6


def select_rows(
    log_path: str | Path,
    window: Window | None = None,
    limit: int | None = None,
) -> pa.Table:
    """The rows of the log inside the window (by arrival offset), at most `limit` of them, in order."""
    table = read_traffic_log(log_path)
    table = table.sort_by([("arrival_time", "ascending")])
    if window is not None:
        offsets = arrival_offsets_s(table)
        keep = offsets >= window.start_s
        if window.end_s is not None:
            keep &= offsets < window.end_s
        table = table.filter(pa.array(keep))
    if limit is not None:
        table = table.slice(0, limit)
    if table.num_rows == 0:
        raise PlanError(f"{log_path}: no rows left to replay after the window and limit")
    return table


def build_plan(
    rows: pa.Table,
    scheduled_s: np.ndarray,
    clamp: LengthClamp = LengthClamp(),
    duration_s: float | None = None,
) -> pa.Table:
    """Attach send times and clamped lengths to the selected rows, dropping sends past `duration_s`.

    Lengths are clamped only where the replay synthesizes the prompt (rows without text);
    `clamped` says per row whether a bound cut either length.
    """
    if len(scheduled_s) != rows.num_rows:
        raise PlanError(f"{len(scheduled_s)} send times for {rows.num_rows} rows")
    plan = rows.append_column("scheduled_s", pa.array(scheduled_s, pa.float64()))
    if duration_s is not None:
        plan = plan.filter(pc.less(plan.column("scheduled_s"), duration_s))
        if plan.num_rows == 0:
            raise PlanError(f"no request is scheduled within the first {duration_s:g} s")

    synthesized = pc.and_(pc.is_null(plan.column("messages")), pc.is_null(plan.column("prompt")))
    prompt = plan.column("prompt_tokens")
    completion = plan.column("completion_tokens")
    expected_prompt, expected_completion = prompt, completion
    clamped = pa.array(np.zeros(plan.num_rows, dtype=bool))
    if clamp.max_prompt_tokens is not None:
        cut = pc.and_(synthesized, pc.greater(prompt, clamp.max_prompt_tokens))
        expected_prompt = pc.if_else(cut, pa.scalar(clamp.max_prompt_tokens, pa.int32()), prompt)
        clamped = pc.or_(clamped, pc.fill_null(cut, False))
    if clamp.max_completion_tokens is not None:
        cut = pc.and_(synthesized, pc.greater(completion, clamp.max_completion_tokens))
        expected_completion = pc.if_else(cut, pa.scalar(clamp.max_completion_tokens, pa.int32()), completion)
        clamped = pc.or_(clamped, pc.fill_null(cut, False))
    plan = plan.append_column("expected_prompt_tokens", expected_prompt.cast(pa.int32()))
    plan = plan.append_column("expected_completion_tokens", expected_completion.cast(pa.int32()))
    plan = plan.append_column("clamped", clamped)
    return plan.sort_by([("scheduled_s", "ascending")])


def split_plan(plan: pa.Table, workers: int) -> list[pa.Table]:
    """Split a plan across workers: a session's requests stay on one worker (they replay in order),
    other requests go round-robin in send order so every worker sees the same load shape."""
    n = plan.num_rows
    sessions = plan.column("session_id").to_pylist()
    assignment = np.arange(n) % workers
    for i, session in enumerate(sessions):
        if session is not None:
            assignment[i] = hash_session(session) % workers
    return [plan.filter(pa.array(assignment == w)) for w in range(workers)]


def hash_session(session_id: str) -> int:
    """A hash of a session id that is the same in every process (Python's hash() is salted)."""
    return zlib.crc32(session_id.encode())
