"""Any Parquet or CSV table whose columns are mapped onto traffic-log fields.

Mapping: `--map SRC_COL=FIELD` (repeatable) names the source column of a field; a source column
already named like a field (`arrival_time`, `prompt_tokens`, ...) is used without a mapping;
other columns are ignored. `arrival_time` is required; every row needs messages, a prompt or
prompt_tokens. Accepted values per field:
- arrival_time: timestamp/date columns (naive = UTC), ISO 8601 text, or numbers (epoch seconds;
  milliseconds when 1e11 or more; seconds after `--start` when it is given);
- prompt_tokens, completion_tokens: integers (see replay/ingest/token_counts.py);
- messages: JSON text or a nested column of OpenAI-shaped chat messages; params: a JSON object (text
  or struct); prefix_block_ids: a list of integers (list column or JSON text);
- api: `chat` or `completions` (else derived from messages/prompt, then `--api`);
- request_id, session_id, prompt, tag, response_text, reference: text (numbers are written out).
request_id defaults to `table-<source row>`. source_row: CSV as in replay/ingest/csv_blocks.py,
Parquet the 1-based row index.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shadowreplay.replay.ingest.batch import SourceBatch, canonical_table, fill_request_ids
from shadowreplay.replay.ingest.csv_blocks import CsvRecordReader
from shadowreplay.replay.ingest.errors import IngestError
from shadowreplay.replay.ingest.json_fields import messages_column, params_column, prefix_block_ids_column
from shadowreplay.replay.ingest.options import IngestOptions
from shadowreplay.replay.ingest.problems import QuarantineRecord, RowProblems
from shadowreplay.replay.ingest.source_files import check_readable, head_bytes, one_line
from shadowreplay.replay.ingest.text_fields import api_column, forbid_messages_and_prompt, require_prompt, text_column
from shadowreplay.replay.ingest.times import arrival_times
from shadowreplay.replay.ingest.token_counts import token_counts
from shadowreplay.replay.schemas.traffic_log import COLUMNS

PARQUET_MAGIC = b"PAR1"
PARQUET_BATCH_ROWS = 64 * 1024
_TEXT_FIELDS = ("session_id", "tag", "response_text", "reference")


def is_parquet(path: Path) -> bool:
    """Whether the file starts with Parquet's magic bytes."""
    return head_bytes(path, 4) == PARQUET_MAGIC


def resolve_columns(available: list[str], column_map: Mapping[str, str], path: Path) -> dict[str, str]:
    """Traffic-log field -> source column, from the explicit map plus columns named like fields."""
    fields: dict[str, str] = {}
    for source, target in column_map.items():
        if target not in COLUMNS:
            raise IngestError(f"--map {source}={target}: {target!r} is not a traffic-log field ({', '.join(COLUMNS)})")
        if source not in available:
            raise IngestError(
                f"{path}: --map {source}={target}: no column {source!r} (columns: {', '.join(available)})"
            )
        if target in fields:
            raise IngestError(f"--map: field {target!r} is mapped from both {fields[target]!r} and {source!r}")
        fields[target] = source
    for name in available:
        if name in COLUMNS and name not in fields and name not in column_map:
            fields[name] = name
    if "arrival_time" not in fields:
        raise IngestError(
            f"{path}: no arrival_time column; map one with --map COLUMN=arrival_time (columns: {', '.join(available)})"
        )
    return fields


class MappedTable:
    """A Parquet or CSV table as batches of traffic-log rows."""

    name = "table"

    def __init__(self, path: Path, options: IngestOptions):
        self.path = path
        self.options = options
        check_readable(path)
        self.parquet = is_parquet(path)
        if self.parquet:
            try:
                self.parquet_file = pq.ParquetFile(path)
            except (OSError, pa.ArrowException) as exc:
                raise IngestError(f"{path}: cannot read as Parquet: {one_line(exc)}") from None
            available = self.parquet_file.schema_arrow.names
        else:
            self.csv_reader = CsvRecordReader(path)
            available = self.csv_reader.read_header()
        self.fields = resolve_columns(available, options.column_map, path)
        self.provides_request_ids = "request_id" in self.fields

    def batches(self) -> Iterator[SourceBatch]:
        if self.parquet:
            yield from self._parquet_batches()
        else:
            for block in self.csv_reader.blocks():
                yield self._batch(block.columns, block.source_rows, block.raw_text, block.unparsed)

    def _parquet_batches(self) -> Iterator[SourceBatch]:
        columns = sorted(set(self.fields.values()))
        next_row = 1
        try:
            for record_batch in self.parquet_file.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
                count = record_batch.num_rows
                source_rows = np.arange(next_row, next_row + count, dtype=np.int64)
                next_row += count
                values = {name: record_batch.column(name) for name in columns}
                yield self._batch(values, source_rows, _parquet_raw_text(record_batch), [])
        except (OSError, pa.ArrowException) as exc:
            raise IngestError(f"{self.path}: cannot read as Parquet near row {next_row}: {one_line(exc)}") from None

    def _batch(
        self,
        values: Mapping[str, pa.Array],
        source_rows: np.ndarray,
        raw_text: Callable[[int], str],
        unparsed: list[QuarantineRecord],
    ) -> SourceBatch:
        count = len(source_rows)
        problems = RowProblems(count)

        def source(field: str) -> pa.Array:
            return values[self.fields[field]] if field in self.fields else pa.nulls(count)

        columns: dict[str, pa.Array] = {}
        columns["arrival_time"] = arrival_times(
            source("arrival_time"), "arrival_time", problems, origin=self.options.start, relative_unit="s"
        )
        for field in ("prompt_tokens", "completion_tokens"):
            columns[field] = token_counts(source(field), field, problems, required=False)
        columns["messages"] = messages_column(source("messages"), problems, "messages")
        columns["prompt"] = text_column(source("prompt"), "prompt", problems, reason="invalid_prompt")
        columns["params"] = params_column(source("params"), problems, "params")
        columns["prefix_block_ids"] = prefix_block_ids_column(source("prefix_block_ids"), problems, "prefix_block_ids")
        for field in _TEXT_FIELDS:
            columns[field] = text_column(source(field), field, problems)
        if self.options.tag is not None:
            columns["tag"] = columns["tag"].fill_null(self.options.tag)
        given_ids = text_column(source("request_id"), "request_id", problems) if "request_id" in self.fields else None
        columns["request_id"] = fill_request_ids(given_ids, source_rows, self.name)
        forbid_messages_and_prompt(columns["messages"], columns["prompt"], problems)
        given_api = source("api") if "api" in self.fields else None
        columns["api"] = api_column(given_api, columns["messages"], columns["prompt"], self.options.api, problems)
        require_prompt(columns["messages"], columns["prompt"], columns["prompt_tokens"], problems)
        return SourceBatch(canonical_table(columns, count), source_rows, problems, raw_text, unparsed)


def _parquet_raw_text(batch: pa.RecordBatch) -> Callable[[int], str]:
    """Row i of a Parquet batch as a JSON object (the raw text of a quarantined row)."""

    def raw_text(index: int) -> str:
        row = {name: batch.column(name)[index].as_py() for name in batch.schema.names}
        return json.dumps(row, ensure_ascii=False, default=str)

    return raw_text
