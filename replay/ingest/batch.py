"""A batch of source rows on its way to the traffic log: the canonical columns, where each row came
from, and the problems found in it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shadowreplay.replay.ingest.problems import QuarantineRecord, RowProblems
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA


@dataclass
class SourceBatch:
    """Rows read from a source, converted to the traffic-log columns.

    `rows` follows TRAFFIC_LOG_SCHEMA (values are null where they were invalid), `source_rows` holds
    each row's 1-based row number in the source, `problems` the first problem of each bad row,
    `raw_text(i)` the source text of row i (for the quarantine), and `unparsed` the source rows that
    could not be turned into a row at all.
    """

    rows: pa.Table
    source_rows: np.ndarray
    problems: RowProblems
    raw_text: Callable[[int], str]
    unparsed: list[QuarantineRecord] = field(default_factory=list)


class SourceReader(Protocol):
    """What every format module offers: its format name, whether its rows carry their own request
    ids (which then need the duplicate check), and the source as batches in source order."""

    name: str
    provides_request_ids: bool

    def batches(self) -> Iterator[SourceBatch]: ...


def canonical_table(columns: Mapping[str, pa.Array], num_rows: int) -> pa.Table:
    """A TRAFFIC_LOG_SCHEMA table from the given columns; absent ones are all null."""
    unknown = set(columns) - set(TRAFFIC_LOG_SCHEMA.names)
    if unknown:
        raise ValueError(f"not traffic-log columns: {sorted(unknown)}")
    arrays = []
    for schema_field in TRAFFIC_LOG_SCHEMA:
        column = columns.get(schema_field.name)
        if column is None:
            column = pa.nulls(num_rows, schema_field.type)
        elif column.type != schema_field.type:
            column = pc.cast(column, schema_field.type)
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=TRAFFIC_LOG_SCHEMA)


def row_number_ids(source_rows: np.ndarray, format_name: str) -> pa.Array:
    """Request ids for rows whose source gives none: `<format>-<source row number>` (`azure-17`)."""
    count = len(source_rows)
    if 0 < count <= _CONTIGUOUS_IDS_MAX and _is_contiguous(source_rows):
        return _prefixed_decimals(f"{format_name}-".encode(), int(source_rows[0]), count)
    numbers = pc.cast(pa.array(source_rows, type=pa.int64()), pa.string())
    return pc.binary_join_element_wise(f"{format_name}-", numbers, "")


def fill_request_ids(given: pa.Array | None, source_rows: np.ndarray, format_name: str) -> pa.Array:
    """The source's request ids where present (non-empty), else ids from the source row numbers."""
    if given is None or given.null_count == len(given):
        return row_number_ids(source_rows, format_name)
    given = pc.if_else(pc.equal(given, ""), None, given)
    if given.null_count == 0:
        return given
    return pc.coalesce(given, row_number_ids(source_rows, format_name))


def constant_column(value: str, num_rows: int) -> pa.Array:
    """A string column holding `value` in every row (a slice of one cached column per value)."""
    cached = _CONSTANT_COLUMNS.get(value)
    if cached is None or len(cached) < num_rows:
        if len(_CONSTANT_COLUMNS) >= 16:
            _CONSTANT_COLUMNS.clear()
        cached = pa.repeat(pa.scalar(value, pa.string()), max(num_rows, 1 << 16))
        _CONSTANT_COLUMNS[value] = cached
    return cached.slice(0, num_rows)


_CONSTANT_COLUMNS: dict[str, pa.Array] = {}


# Row numbers as text, for the common case of consecutive rows: the last three digits repeat every
# thousand rows and the others change once per thousand, so the text is written with a few numpy
# broadcasts into a fixed-width buffer (Arrow's int-to-string cast plus a join take several times as long).
_CONTIGUOUS_IDS_MAX = 1 << 24
_LAST_THREE_DIGITS = np.frombuffer("".join(f"{i:03d}" for i in range(1000)).encode(), dtype=np.uint8).reshape(1000, 3)


def _is_contiguous(source_rows: np.ndarray) -> bool:
    first, last = int(source_rows[0]), int(source_rows[-1])
    return first >= 0 and last - first == len(source_rows) - 1 and bool(np.all(np.diff(source_rows) == 1))


def _prefixed_decimals(prefix: bytes, first: int, count: int) -> pa.Array:
    """`prefix` followed by the decimal text of first, first + 1, ..., first + count - 1 (first >= 0)."""
    offsets = np.empty(count + 1, dtype=np.int32)
    offsets[0] = 0
    pieces = []
    done = 0
    while done < count:
        start = first + done
        digits = len(str(start))
        size = min(count - done, 10**digits - start)
        width = len(prefix) + digits
        pieces.append(_fixed_width_text(prefix, start, size, digits))
        end = int(offsets[done])
        offsets[done + 1 : done + size + 1] = np.arange(end + width, end + width * (size + 1), width, dtype=np.int32)
        done += size
    data = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    return pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _fixed_width_text(prefix: bytes, start: int, size: int, digits: int) -> np.ndarray:
    """The bytes of `prefix` + the decimal text of start .. start + size - 1, all `digits` long."""
    width = len(prefix) + digits
    if digits <= 3:
        text = "".join(prefix.decode() + str(number) for number in range(start, start + size)).encode()
        return np.frombuffer(text, dtype=np.uint8)
    # whole thousands around the range; from 10**3 on, every number in them has `digits` digits
    low = start % 1000
    thousand = start // 1000
    thousands = -(-(low + size) // 1000)
    rows = np.empty((thousands, 1000, width), dtype=np.uint8)
    rows[:] = _thousand_template(prefix, digits)
    high_digits = digits - 3
    high = "".join(str(number) for number in range(thousand, thousand + thousands)).encode()
    high_view = np.ndarray(
        (thousands, 1000), dtype=f"V{high_digits}", buffer=rows, offset=len(prefix), strides=(1000 * width, width)
    )
    high_view[:] = np.frombuffer(high, dtype=f"V{high_digits}")[:, None]
    return rows.reshape(-1, width)[low : low + size].reshape(-1)


@functools.lru_cache(maxsize=16)
def _thousand_template(prefix: bytes, digits: int) -> np.ndarray:
    """1000 rows of `prefix`, `digits - 3` placeholder bytes and the last three digits 000 .. 999."""
    width = len(prefix) + digits
    template = np.zeros((1000, width), dtype=np.uint8)
    template[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    template[:, width - 3 :] = _LAST_THREE_DIGITS
    template.flags.writeable = False
    return template
