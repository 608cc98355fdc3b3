"""Mooncake traces (kvcache-ai/Mooncake `FAST25-release/traces/*.jsonl`), one JSON object a line.

Fields: `timestamp` (milliseconds after the trace start; the start is `--start`, by default
2024-01-01T00:00:00Z), `input_length` -> prompt_tokens, `output_length` -> completion_tokens (both
required), `hash_ids` -> prefix_block_ids (ids of 512-token prompt blocks; optional). Other fields
are ignored. request_id is `mooncake-<line number>`; api is `--api`; tag is `--tag`.

Blocks of lines go through Arrow's JSON reader; a block it rejects (a bad line, a blank line, a
float token count) is read again line by line so that each bad line is found.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from shadowreplay.replay.ingest.batch import SourceBatch, canonical_table, constant_column, row_number_ids
from shadowreplay.replay.ingest.json_fields import PREFIX_BLOCK_IDS_TYPE, prefix_block_ids_column
from shadowreplay.replay.ingest.json_rows import JsonRows, decode_object, printable, scalar_text
from shadowreplay.replay.ingest.jsonl_blocks import LineBlock, iter_line_blocks
from shadowreplay.replay.ingest.options import DEFAULT_RELATIVE_START, IngestOptions
from shadowreplay.replay.ingest.problems import QuarantineRecord, RowProblems
from shadowreplay.replay.ingest.times import arrival_times
from shadowreplay.replay.ingest.token_counts import token_counts

FAST_SCHEMA = pa.schema(
    [
        ("timestamp", pa.float64()),
        ("input_length", pa.int64()),
        ("output_length", pa.int64()),
        ("hash_ids", PREFIX_BLOCK_IDS_TYPE),
    ]
)
FIELDS = tuple(FAST_SCHEMA.names)


class MooncakeTrace:
    """A Mooncake trace as batches of traffic-log rows."""

    name = "mooncake"
    provides_request_ids = False

    def __init__(self, path: Path, options: IngestOptions):
        self.path = path
        self.options = options
        self.origin = options.start or DEFAULT_RELATIVE_START

    def batches(self) -> Iterator[SourceBatch]:
        for block in iter_line_blocks(self.path):
            fast = self._read_with_arrow(block)
            yield fast if fast is not None else self._read_line_by_line(block)

    def _read_with_arrow(self, block: LineBlock) -> SourceBatch | None:
        try:
            table = pajson.read_json(
                io.BytesIO(block.data),
                parse_options=pajson.ParseOptions(explicit_schema=FAST_SCHEMA, unexpected_field_behavior="ignore"),
            )
        except pa.ArrowException:
            return None
        if table.num_rows != block.line_count():
            return None  # blank lines: numbering needs the slow path
        source_rows = np.arange(block.first_line, block.first_line + table.num_rows, dtype=np.int64)
        lines: list[bytes] = []

        def raw_text(index: int) -> str:
            if not lines:
                lines.extend(block.lines())
            return printable(lines[index])

        columns = {name: table.column(name).combine_chunks() for name in FIELDS}
        return self._batch(columns, source_rows, RowProblems(table.num_rows), raw_text, [])

    def _read_line_by_line(self, block: LineBlock) -> SourceBatch:
        rows = JsonRows(FIELDS)
        for offset, line in enumerate(block.lines()):
            number = block.first_line + offset
            if not line.strip():
                continue
            value, why = decode_object(line)
            if value is None:
                assert why is not None  # decode_object: no object, then why not
                rows.reject(number, printable(line), why)
                continue
            rows.add(
                number,
                printable(line),
                {
                    "timestamp": scalar_text(value.get("timestamp")),
                    "input_length": scalar_text(value.get("input_length")),
                    "output_length": scalar_text(value.get("output_length")),
                    "hash_ids": scalar_text(value.get("hash_ids")),
                },
            )
        columns = {name: rows.column(name) for name in FIELDS}
        return self._batch(columns, rows.row_numbers(), rows.new_problems(), rows.raw.__getitem__, rows.unparsed)

    def _batch(
        self,
        columns: dict[str, pa.Array],
        source_rows: np.ndarray,
        problems: RowProblems,
        raw_text: Callable[[int], str],
        unparsed: list[QuarantineRecord],
    ) -> SourceBatch:
        count = len(source_rows)
        canonical = {
            "request_id": row_number_ids(source_rows, self.name),
            "arrival_time": arrival_times(
                columns["timestamp"], "arrival_time", problems, origin=self.origin, relative_unit="ms"
            ),
            "prompt_tokens": token_counts(columns["input_length"], "prompt_tokens", problems, required=True),
            "completion_tokens": token_counts(columns["output_length"], "completion_tokens", problems, required=True),
            "prefix_block_ids": prefix_block_ids_column(columns["hash_ids"], problems),
            "api": constant_column(self.options.api, count),
        }
        if self.options.tag is not None:
            canonical["tag"] = constant_column(self.options.tag, count)
        return SourceBatch(canonical_table(canonical, count), source_rows, problems, raw_text, unparsed)
