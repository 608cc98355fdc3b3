"""The replay plan: which rows of a traffic log are sent, when, and with what length limits.

A plan is a pyarrow Table of the traffic-log columns plus `scheduled_s` (seconds from the run's
start), `expected_prompt_tokens`, `expected_completion_tokens`, `completion_cap`, `clamped` and
`raised`, in send order. Send times come from a load shape (loadgen) or from the log's own arrival
times; the plan only selects, clamps and splits rows, so the runner never needs to know which.

Lengths (docs/DESIGN.md "Output lengths"; the request builder turns them into a body):
- `expected_prompt_tokens`: the recorded `prompt_tokens`, cut to `--max-prompt-tokens` for rows
  whose prompt is synthesized. A row with recorded text is sent as recorded, never cut: its
  expected length stays the recorded one, it is not flagged `clamped`, and `prompts_over_max`
  counts it (the server may refuse it; that is its row's status).
- `expected_completion_tokens`: the exact output length the request asks for: with
  `output_lengths="recorded"` the recorded `completion_tokens` of every row (text or synthesized),
  cut to `--max-completion-tokens` and raised to 1; null with `"natural"` or where nothing was
  recorded (the model ends its answer).
- `completion_cap`: where no exact length is asked, the most output tokens the request may ask
  for: a synthesized row's recorded length (cut to the bound), a text row's bound (its body's own
  `max_tokens` is cut to it by the builder); null: no cap.
- `clamped`: a bound cut this row's prompt or recorded output length (the builder adds rows
  whose body's own max_tokens it cut); `raised`: a length was raised above the recorded one (a
  recorded output of 0 asked as 1 here; a prompt below the chat template's floor, in the builder).
The builder's additions are per target, so a run's counts are read from its result rows
(`length_counts`), which carry the flags each request really had.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.schemas.durations import DurationError, parse_duration_s
from shadowreplay.replay.schemas.traffic_log import TrafficLog, open_traffic_log


class PlanError(ShadowReplayError, ValueError):
    """A replay selection that cannot be honoured (bad window, nothing left to send)."""


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
        try:
            window = cls(
                start_s=parse_duration_s(start, "window start") if start.strip() else 0.0,
                end_s=parse_duration_s(end, "window end") if end.strip() else None,
            )
        except DurationError as exc:
            raise PlanError(f"window {text!r}: {exc}") from None
        if window.end_s is not None and window.end_s <= window.start_s:
            raise PlanError(f"window {text!r}: end must be after start")
        return window


OutputLengths = Literal["recorded", "natural"]
OUTPUT_LENGTHS: tuple[OutputLengths, ...] = ("recorded", "natural")


@dataclass(frozen=True)
class LengthClamp:
    """Upper bounds on prompt and output lengths (for small models' context windows) and how output
    lengths are asked for: "recorded" (exactly the logged `completion_tokens`, where known) or
    "natural" (the model ends its answer; a body's own max_tokens kept, cut to the bound)."""

    max_prompt_tokens: int | None = None
    max_completion_tokens: int | None = None
    output_lengths: OutputLengths = "recorded"

    def __post_init__(self) -> None:
        if self.output_lengths not in OUTPUT_LENGTHS:
            raise PlanError(f"output lengths {self.output_lengths!r}: expected one of {', '.join(OUTPUT_LENGTHS)}")


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
    """The rows of the log inside the window (by arrival offset), at most `limit` of them, in order.

    The order is arrival time, rows with equal times in the order of the file (a stable sort), and
    `limit` keeps the first rows of that order inside the window. With a window or a limit only the
    rows they select are read: row groups whose `arrival_time` statistics put them outside are
    skipped, the others are first read by that column alone, and whole rows are read only from the
    row groups that hold selected rows (so start-up does not grow with the rows left out)."""
    pf = open_traffic_log(log_path)
    if window is None and limit is None:
        table = pf.read().sort_by([("arrival_time", "ascending")])
    else:
        table = _read_selected(pf, window, limit)
    if table.num_rows == 0:
        raise PlanError(f"{log_path}: no rows left to replay after the window and limit")
    return table


def _read_selected(pf: TrafficLog, window: Window | None, limit: int | None) -> pa.Table:
    """select_rows with a window or a limit, reading only the row groups that can hold its rows.

    The result is the one of sorting the whole log and then filtering and slicing it: the window
    test is the same float expression as `arrival_offsets_s` on the same int64 times, and a row
    group is skipped only when that (monotone) expression on its statistics' min/max puts every
    one of its rows outside."""
    if limit is not None and limit <= 0:
        return pf.empty_table()
    ranges = pf.arrival_time_ranges()
    times: dict[int, np.ndarray] = {}
    if ranges is None:  # no usable statistics: one read of the arrival_time column alone
        column = pf.read(columns=["arrival_time"]).column("arrival_time")
        if column.null_count:  # not a valid log; select exactly as a full read would
            return _select_from_table(pf.read(), window, limit)
        all_times = column.cast(pa.int64()).to_numpy()
        ranges = []
        at = 0
        for g in range(pf.num_row_groups):
            n = pf.row_group_rows(g)
            times[g] = all_times[at : at + n]
            ranges.append((int(times[g].min()), int(times[g].max())) if n else None)
            at += n
    nonempty = [(r, g) for g, r in enumerate(ranges) if r is not None]
    if not nonempty:
        return pf.empty_table()
    first = np.int64(min(r[0] for r, _ in nonempty))

    def inside(micros: np.ndarray) -> np.ndarray:
        offsets = (micros - first) / 1e6  # exactly arrival_offsets_s's values
        keep = offsets >= window.start_s if window is not None else np.ones(len(micros), dtype=bool)
        if window is not None and window.end_s is not None:
            keep &= offsets < window.end_s
        return keep

    def may_hold(lo: int, hi: int) -> bool:
        """Whether a row group whose times lie in [lo, hi] can hold a row inside the window."""
        if window is None:
            return True
        low, high = (np.array([lo, hi], dtype=np.int64) - first) / 1e6
        return bool(high >= window.start_s and (window.end_s is None or low < window.end_s))

    candidates = sorted((lo, g) for (lo, hi), g in nonempty if may_hold(lo, hi))
    # In-window rows found so far: arrival time, row group, row within it (with a limit: the first
    # `limit` of them by time and file order, once that many are found).
    found_t: list[np.ndarray] = []
    found_g: list[np.ndarray] = []
    found_r: list[np.ndarray] = []
    for lo, g in candidates:
        if limit is not None and found_t and len(found_t[0]) >= limit and lo > found_t[0][limit - 1]:
            break  # this and every later group starts after the limit-th selected row
        micros = times.pop(g, None)
        if micros is None:
            micros = pf.read_row_group(g, columns=["arrival_time"]).column("arrival_time").cast(pa.int64()).to_numpy()
        rows = np.flatnonzero(inside(micros))
        found_t.append(micros[rows])
        found_g.append(np.full(len(rows), g, np.int64))
        found_r.append(rows.astype(np.int64))
        if limit is not None and sum(len(t) for t in found_t) >= limit:
            kept_t, kept_g, kept_r = (np.concatenate(found) for found in (found_t, found_g, found_r))
            order = np.lexsort((kept_r, kept_g, kept_t))[:limit]  # by time, then file order
            found_t, found_g, found_r = [kept_t[order]], [kept_g[order]], [kept_r[order]]
    kept_g = np.concatenate(found_g) if found_g else np.zeros(0, np.int64)
    kept_r = np.concatenate(found_r) if found_r else np.zeros(0, np.int64)
    order = np.lexsort((kept_r, kept_g))  # by row group, then row
    groups, starts = np.unique(kept_g[order], return_index=True)
    ends = [*starts[1:], len(order)] if len(order) else []
    pieces = [
        pf.read_row_group(int(g)).take(pa.array(kept_r[order[start:end]]))
        for g, start, end in zip(groups, starts, ends, strict=True)
    ]
    if not pieces:
        return pf.empty_table()
    # Pieces in file order, so the stable sort orders equal times as the whole log's sort does.
    table = pa.concat_tables(pieces).sort_by([("arrival_time", "ascending")])
    return table.slice(0, limit) if limit is not None else table


def _select_from_table(table: pa.Table, window: Window | None, limit: int | None) -> pa.Table:
    """The selection made on a whole log read into memory."""
    table = table.sort_by([("arrival_time", "ascending")])
    if window is not None:
        offsets = arrival_offsets_s(table)
        keep = offsets >= window.start_s
        if window.end_s is not None:
            keep &= offsets < window.end_s
        table = table.filter(pa.array(keep))
    if limit is not None:
        table = table.slice(0, limit)
    return table


def build_plan(
    rows: pa.Table,
    scheduled_s: np.ndarray,
    clamp: LengthClamp = LengthClamp(),
    duration_s: float | None = None,
) -> pa.Table:
    """Attach send times and the lengths each row asks for (module docstring) to the selected rows,
    dropping sends past `duration_s`."""
    if len(scheduled_s) != rows.num_rows:
        raise PlanError(f"{len(scheduled_s)} send times for {rows.num_rows} rows")
    plan = rows.append_column("scheduled_s", pa.array(scheduled_s, pa.float64()))
    if duration_s is not None:
        plan = plan.filter(pc.less(plan.column("scheduled_s"), duration_s))
        if plan.num_rows == 0:
            raise PlanError(f"no request is scheduled within the first {duration_s:g} s")

    synthesized = pc.and_(pc.is_null(plan.column("messages")), pc.is_null(plan.column("prompt")))
    prompt = plan.column("prompt_tokens").cast(pa.int32())
    completion = plan.column("completion_tokens").cast(pa.int32())
    expected_prompt, recorded_output = prompt, completion
    clamped = pa.array(np.zeros(plan.num_rows, dtype=bool))
    if clamp.max_prompt_tokens is not None:
        # Only synthesized prompts can be cut: recorded text is sent whole (prompts_over_max counts it).
        cut = pc.and_(synthesized, pc.greater(prompt, clamp.max_prompt_tokens))
        expected_prompt = pc.if_else(cut, pa.scalar(clamp.max_prompt_tokens, pa.int32()), prompt)
        clamped = pc.or_(clamped, pc.fill_null(cut, False))
    bound = pa.scalar(clamp.max_completion_tokens, pa.int32())
    if clamp.max_completion_tokens is not None:
        cut = pc.greater(completion, clamp.max_completion_tokens)  # every row: text rows' outputs too
        recorded_output = pc.if_else(cut, bound, completion)
        clamped = pc.or_(clamped, pc.fill_null(cut, False))
    # A recorded output of 0 tokens (or less) cannot be asked for: ask for 1, and say so.
    low = pc.fill_null(pc.less(recorded_output, 1), False)
    recorded_output = pc.if_else(low, pa.scalar(1, pa.int32()), recorded_output)
    if clamp.output_lengths == "recorded":
        expected_completion = recorded_output
        raised = low
    else:
        expected_completion = pa.nulls(plan.num_rows, pa.int32())
        raised = pc.and_(low, synthesized)  # a synthesized row's recorded length is its cap
    cap = pc.if_else(synthesized, pc.coalesce(recorded_output, bound), bound)
    plan = plan.append_column("expected_prompt_tokens", expected_prompt.cast(pa.int32()))
    plan = plan.append_column("expected_completion_tokens", expected_completion.cast(pa.int32()))
    plan = plan.append_column("completion_cap", cap.cast(pa.int32()))
    plan = plan.append_column("clamped", clamped)
    plan = plan.append_column("raised", raised)
    return plan.sort_by([("scheduled_s", "ascending")])


def prompts_over_max(plan: pa.Table, clamp: LengthClamp) -> int:
    """Rows with recorded text whose recorded prompt is longer than `clamp.max_prompt_tokens`: sent
    whole (recorded text is never cut), so not `clamped`; the manifest counts them."""
    if clamp.max_prompt_tokens is None:
        return 0
    text = pc.or_(pc.is_valid(plan.column("messages")), pc.is_valid(plan.column("prompt")))
    over = pc.and_(text, pc.greater(plan.column("prompt_tokens"), clamp.max_prompt_tokens))
    return int(pc.sum(pc.fill_null(over, False).cast(pa.int64())).as_py() or 0)


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
