"""Turning JSON Lines into columns row by row: the slow path for request logs with messages, and
the fallback for blocks that Arrow's JSON reader rejects. Values are gathered per field in Python
and then checked by the same column validators as every other format."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from shadowreplay.replay.ingest.json_fields import to_json_text
from shadowreplay.replay.ingest.problems import QuarantineRecord, RowProblems

STRING = pa.string()  # Arrow data types are immutable, so one instance can be the default


def scalar_text(value: Any) -> str | None:
    """A JSON scalar as text for the column validators: integers and integral floats as decimal
    integers, other floats as Python writes them, strings as they are, booleans as `true`/`false`
    (which no number validator accepts), lists and objects as JSON."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value
    return to_json_text(value)


def decode_object(line: bytes) -> tuple[dict | None, str | None]:
    """The JSON object on one line, or None and why it is not one."""
    try:
        value = json.loads(line)
    except UnicodeDecodeError:
        return None, "not valid UTF-8"
    except ValueError as exc:
        return None, f"invalid JSON: {exc}"
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, not an object"
    return value, None


def printable(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")


@dataclass
class JsonRows:
    """Rows gathered one at a time: values by field, their line numbers and raw text, problems
    already known (field, reason, detail) and lines that were not objects at all."""

    fields: tuple[str, ...]
    values: dict[str, list] = field(init=False)
    source_rows: list[int] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    known_problems: list[tuple[int, str, str, str]] = field(default_factory=list)
    unparsed: list[QuarantineRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.values = {name: [] for name in self.fields}

    def add(self, line_number: int, raw: str, values: dict[str, Any]) -> int:
        """Append one row (fields not in `values` are null); returns its index."""
        for name in self.fields:
            self.values[name].append(values.get(name))
        self.source_rows.append(line_number)
        self.raw.append(raw)
        return len(self.source_rows) - 1

    def problem(self, index: int, field_name: str, reason: str, detail: str) -> None:
        self.known_problems.append((index, field_name, reason, detail))

    def reject(self, line_number: int, raw: str, detail: str) -> None:
        self.unparsed.append(QuarantineRecord(line_number, None, "unparseable_row", detail, raw))

    def __len__(self) -> int:
        return len(self.source_rows)

    def column(self, name: str, kind: pa.DataType = STRING) -> pa.Array:
        return pa.array(self.values[name], type=kind)

    def row_numbers(self) -> np.ndarray:
        return np.asarray(self.source_rows, dtype=np.int64)

    def new_problems(self) -> RowProblems:
        """A RowProblems for these rows, holding the problems already known."""
        problems = RowProblems(len(self))
        for index, field_name, reason, detail in self.known_problems:
            problems.flag_rows([index], field_name, reason, detail)
        return problems
