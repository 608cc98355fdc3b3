"""Row-level problems: the reasons a source row is quarantined, and the record of the first problem
found in each row of a batch.

Validators work on whole columns; they `flag` the rows that fail with a reason code from `REASONS`,
the canonical field it concerns, and a detail naming the offending value. Only the first problem of
a row is kept (fields are checked in a fixed order), so the quarantine holds one line per bad row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

REASONS: dict[str, str] = {
    "unparseable_row": (
        "the row could not be parsed (invalid JSON, not an object, wrong number of CSV fields, bad encoding)"
    ),
    "missing_value": "a required field is empty or absent",
    "invalid_time": "the arrival time is not a timestamp this format accepts",
    "non_integer_token_count": "a token count is not an integer",
    "negative_token_count": "a token count is negative",
    "token_count_out_of_range": "a token count exceeds 2**31 - 1",
    "missing_prompt": "the row has neither messages, nor a prompt, nor a prompt token count",
    "invalid_messages": "messages are not valid JSON or not OpenAI-shaped chat messages",
    "invalid_prompt": "the prompt is not a string",
    "invalid_params": "request params are not a JSON object",
    "invalid_prefix_block_ids": "prefix block ids are not a list of integers",
    "invalid_api": "api is neither `chat` nor `completions`, or contradicts the row's messages/prompt",
    "invalid_value": "a text field holds a value that is not text or a number",
    "duplicate_request_id": "the request_id was already used by an earlier kept row",
}


@dataclass(frozen=True)
class QuarantineRecord:
    """One quarantined source row."""

    source_row: int
    field: str | None
    reason: str
    detail: str
    raw: str


@dataclass(frozen=True)
class RowProblem:
    field: str | None
    reason: str
    detail: str


Detail = str | Callable[[int], str]


class RowProblems:
    """The first problem of each row of one batch (rows are addressed by their index in the batch)."""

    def __init__(self, num_rows: int):
        self.num_rows = num_rows
        self._first: dict[int, RowProblem] = {}

    def flag(
        self, mask: np.ndarray | pa.Array | pa.ChunkedArray, field: str | None, reason: str, detail: Detail
    ) -> None:
        """Record `reason` for every row where `mask` is true (null counts as false) that has no
        problem yet. `detail` is a fixed text or a function of the row index."""
        if reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {reason!r}")
        if not _any_true(mask):
            return
        for index in np.flatnonzero(as_bool_mask(mask)).tolist():
            if index not in self._first:
                text = detail(index) if callable(detail) else detail
                self._first[index] = RowProblem(field, reason, text)

    def flag_rows(self, indices: list[int] | np.ndarray, field: str | None, reason: str, detail: Detail) -> None:
        """Like `flag`, for rows given by index."""
        mask = np.zeros(self.num_rows, dtype=bool)
        mask[np.asarray(indices, dtype=np.int64)] = True
        self.flag(mask, field, reason, detail)

    def __bool__(self) -> bool:
        return bool(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def has_problem(self, index: int) -> bool:
        return index in self._first

    def bad_mask(self) -> np.ndarray:
        """A boolean array, true for rows with a problem."""
        mask = np.zeros(self.num_rows, dtype=bool)
        if self._first:
            mask[np.fromiter(self._first.keys(), dtype=np.int64, count=len(self._first))] = True
        return mask

    def items(self) -> list[tuple[int, RowProblem]]:
        """(row index, problem) pairs in row order."""
        return sorted(self._first.items())


def _any_true(mask: np.ndarray | pa.Array | pa.ChunkedArray) -> bool:
    if isinstance(mask, np.ndarray):
        return bool(mask.any())
    return bool(pc.any(mask).as_py())


def as_bool_mask(mask: np.ndarray | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numpy boolean array from a numpy or Arrow mask; Arrow nulls become false."""
    if isinstance(mask, np.ndarray):
        return mask.astype(bool, copy=False)
    if isinstance(mask, pa.ChunkedArray):
        mask = mask.combine_chunks()
    return mask.fill_null(False).to_numpy(zero_copy_only=False).astype(bool, copy=False)
