"""A batch of source rows on its way to the traffic log: the canonical columns, where each row came
from, and the problems found in it."""

from __future__ import annotations

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
    """A string column holding `value` in every row."""
    return pa.repeat(pa.scalar(value, pa.string()), num_rows)
