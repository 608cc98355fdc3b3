"""The canonical traffic log: one row per production request (docs/DESIGN.md, schema_version 1).

This module is the single definition of the contract. Every writer (ingest, capture proxy) and
every reader (replay, inspect, shadow comparison) goes through it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.schemas.contract import METADATA_KIND_KEY, METADATA_VERSION_KEY, stamp

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


def open_traffic_log(path: str | Path) -> pq.ParquetFile:
    """Open a traffic log for streaming reads, after checking its schema."""
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise TrafficLogError(f"{path}: cannot read as Parquet: {exc}") from None
    check_schema(path, pf.schema_arrow)
    return pf


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
    pf = open_traffic_log(path)
    return pf.read(columns=columns)


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
