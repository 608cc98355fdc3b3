"""The canonical traffic log: one row per production request (docs/DESIGN.md, schema_version 1).

This module is the single definition of the contract. Every writer (ingest, capture proxy) and
every reader (replay, inspect, shadow comparison) goes through it.

A traffic log is one Parquet file (what `ingest` writes) or a directory of committed shards (what
`capture` writes, replay/capture/recorder.py), read as one log: its shards in name order, one
sequence of row groups (`TrafficLog`). In a directory, a shard `NAME-NNNNN.parquet` is a part of
`NAME.parquet` and is not read where `NAME.parquet` is there (`log_files`): a capture merges a
rotation's small shards into one file and then deletes them, and a crash between the two never
makes a reader count a row twice. Columns beyond the contract's (a capture's production timings)
are kept where a shard has them and null in the shards that lack them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.schemas.contract import METADATA_KIND_KEY, METADATA_VERSION_KEY, stamp
from shadowreplay.replay.schemas.shards import SHARD_SUFFIX, committed_shards

SCHEMA_VERSION = 1
KIND = "traffic_log"

API_VALUES = ("chat", "completions")

TRAFFIC_LOG_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("arrival_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("session_id", pa.string()),
        pa.field("api", pa.string(), nullable=False),
        pa.field("messages", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("params", pa.string()),
        pa.field("prompt_tokens", pa.int32()),
        pa.field("completion_tokens", pa.int32()),
        pa.field("prefix_block_ids", pa.list_(pa.int64())),
        pa.field("tag", pa.string()),
        pa.field("response_text", pa.string()),
        pa.field("reference", pa.string()),
    ],
    metadata=stamp(KIND, SCHEMA_VERSION),
)

COLUMNS = tuple(TRAFFIC_LOG_SCHEMA.names)


class TrafficLogError(ShadowReplayError, ValueError):
    """A file that is not a readable traffic log of a schema version we know."""


def check_schema(path: str | Path, schema: pa.Schema) -> None:
    """Raise TrafficLogError unless `schema` (read from `path`) is a traffic log we can read."""
    meta = schema.metadata or {}
    version = meta.get(METADATA_VERSION_KEY)
    if meta.get(METADATA_KIND_KEY, KIND.encode()) != KIND.encode():
        raise TrafficLogError(f"{path}: not a traffic log (kind {meta.get(METADATA_KIND_KEY)!r})")
    if version is None:
        raise TrafficLogError(f"{path}: no {METADATA_VERSION_KEY.decode()} in the file metadata; ingest it first")
    if int(version) != SCHEMA_VERSION:
        raise TrafficLogError(
            f"{path}: traffic log schema_version {int(version)}, this shadowreplay reads {SCHEMA_VERSION}"
        )
    missing = [name for name in COLUMNS if name not in schema.names]
    if missing:
        raise TrafficLogError(f"{path}: traffic log lacks columns {missing}")


_PART_NAME = re.compile(r"^(?P<whole>.+)-\d+$")


def part_of(shard: Path) -> str | None:
    """The name (without suffix) of the merged shard that `NAME-NNNNN.parquet` is a part of, else None."""
    part = _PART_NAME.match(shard.stem)
    return part["whole"] if part is not None else None


def log_files(path: str | Path) -> list[Path]:
    """The Parquet files of the traffic log at `path`: the file itself, or a directory's committed
    shards in name order, less the parts a merged shard covers (module docstring)."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    shards = committed_shards(path)
    names = {p.name for p in shards}
    files = [p for p in shards if (whole := part_of(p)) is None or f"{whole}{SHARD_SUFFIX}" not in names]
    if not files:
        raise TrafficLogError(f"{path}: a directory without committed Parquet shards ({SHARD_SUFFIX})")
    return files


def _open_file(path: Path) -> pq.ParquetFile:
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise TrafficLogError(f"{path}: cannot read as Parquet: {exc}") from None
    check_schema(path, pf.schema_arrow)
    return pf


class TrafficLog:
    """A traffic log opened for streaming reads, its schema checked: one file, or a directory's
    shards read as one sequence of row groups (`read_row_group(g)` counts across the shards, in
    name order). The contract's columns must have one type in every shard."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.paths = log_files(self.path)
        self.files = [_open_file(p) for p in self.paths]
        first = self.files[0].schema_arrow
        for file_path, pf in zip(self.paths[1:], self.files[1:]):
            for name in COLUMNS:
                if pf.schema_arrow.field(name).type != first.field(name).type:
                    raise TrafficLogError(
                        f"{file_path}: column {name} is {pf.schema_arrow.field(name).type}, "
                        f"{first.field(name).type} in {self.paths[0].name}; the shards of a log agree on types"
                    )
        self.schema_arrow = first if len(self.files) == 1 else _union_schema([pf.schema_arrow for pf in self.files])
        self._groups = [(f, g) for f, pf in enumerate(self.files) for g in range(pf.metadata.num_row_groups)]

    @property
    def num_rows(self) -> int:
        return sum(pf.metadata.num_rows for pf in self.files)

    @property
    def num_row_groups(self) -> int:
        return len(self._groups)

    def row_group_rows(self, group: int) -> int:
        f, g = self._groups[group]
        return self.files[f].metadata.row_group(g).num_rows

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The whole log (or some columns of it), shards in order."""
        return self._joined([pf.read(columns=self._present(pf, columns)) for pf in self.files], columns)

    def read_row_group(self, group: int, columns: Sequence[str] | None = None) -> pa.Table:
        f, g = self._groups[group]
        pf = self.files[f]
        return self._joined([pf.read_row_group(g, columns=self._present(pf, columns))], columns)

    def iter_batches(
        self, batch_size: int, columns: Sequence[str] | None = None, row_groups: Sequence[int] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Batches of the log (of `row_groups`, counted across the shards), in order."""
        chosen = range(len(self._groups)) if row_groups is None else row_groups
        for group in chosen:
            f, g = self._groups[group]
            pf = self.files[f]
            yield from pf.iter_batches(batch_size=batch_size, row_groups=[g], columns=self._present(pf, columns))

    def arrival_time_ranges(self) -> list[tuple[int, int] | None] | None:
        """arrival_time_ranges of each row group, across the shards (None: a shard lacks statistics)."""
        ranges: list[tuple[int, int] | None] = []
        for pf in self.files:
            found = arrival_time_ranges(pf)
            if found is None:
                return None
            ranges.extend(found)
        return ranges

    def empty_table(self) -> pa.Table:
        return self.schema_arrow.empty_table()

    def _present(self, pf: pq.ParquetFile, columns: Sequence[str] | None) -> list[str] | None:
        return None if columns is None else [c for c in columns if c in pf.schema_arrow.names]

    def _joined(self, tables: list[pa.Table], columns: Sequence[str] | None) -> pa.Table:
        """The tables as one, with every column asked for (or of the log), null where a shard lacks it."""
        schema = self.schema_arrow if columns is None else pa.schema([self.schema_arrow.field(c) for c in columns])
        whole = []
        for table in tables:
            for field in schema:
                if field.name not in table.column_names:
                    table = table.append_column(field, pa.nulls(table.num_rows, field.type))
            whole.append(table.select(schema.names).cast(schema))
        return pa.concat_tables(whole) if len(whole) > 1 else whole[0]


def _union_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """The columns of every shard, in the order first met, with the first shard's metadata."""
    fields: dict[str, pa.Field] = {}
    for schema in schemas:
        for field in schema:
            fields.setdefault(field.name, field.with_nullable(True) if schema is not schemas[0] else field)
    return pa.schema(list(fields.values()), metadata=schemas[0].metadata)


def open_traffic_log(path: str | Path) -> TrafficLog:
    """Open a traffic log (a file or a capture's directory) for streaming reads, after checking its schema."""
    return TrafficLog(path)


_UNIT_NAMES = {"ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}


def arrival_time_ranges(pf: pq.ParquetFile) -> list[tuple[int, int] | None] | None:
    """Each row group's smallest and largest `arrival_time` as the int64 the column casts to (its
    Arrow unit), from the row-group statistics in the file's footer; None for an empty row group.
    None when a non-empty row group has no usable statistics (the caller reads the column)."""
    field = pf.schema_arrow.field("arrival_time")
    if not pa.types.is_timestamp(field.type):
        return None
    metadata = pf.metadata
    index = next((i for i in range(metadata.num_columns) if metadata.schema.column(i).path == "arrival_time"), None)
    if index is None:
        return None
    unit = _UNIT_NAMES.get(field.type.unit)
    ranges: list[tuple[int, int] | None] = []
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        if group.num_rows == 0:
            ranges.append(None)
            continue
        stats = group.column(index).statistics
        if stats is None or not stats.has_min_max or stats.physical_type != "INT64" or stats.null_count:
            return None
        # The raw values are in the file's unit: usable only where that is the unit the column reads as.
        if json.loads(stats.logical_type.to_json()).get("timeUnit") != unit:
            return None
        ranges.append((int(stats.min_raw), int(stats.max_raw)))
    return ranges


def read_traffic_log(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read a whole traffic log (or some columns of it) after checking its schema."""
    return open_traffic_log(path).read(columns=columns)


def parse_messages(messages: str | None) -> list[dict] | None:
    """The chat messages of a row as Python objects (None when the row has none)."""
    if messages is None:
        return None
    return json.loads(messages)


def parse_params(params: str | None) -> dict:
    """The other request fields of a row (max_tokens, temperature, ...) as a dict."""
    if not params:
        return {}
    return json.loads(params)
