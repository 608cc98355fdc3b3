"""Choosing the reader for a source: `--format`, or `auto` from the file's content.

auto: Parquet magic bytes -> table; a first non-blank line that is a JSON object -> mooncake when
it has `input_length` or `hash_ids`, else openai-jsonl; otherwise CSV -> azure when the header has
TIMESTAMP, ContextTokens and GeneratedTokens (and no --map), else table.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

from shadowreplay.replay.ingest.batch import SourceReader
from shadowreplay.replay.ingest.errors import IngestError
from shadowreplay.replay.ingest.formats.azure import COLUMNS as AZURE_COLUMNS
from shadowreplay.replay.ingest.formats.azure import AzureTrace
from shadowreplay.replay.ingest.formats.mooncake import MooncakeTrace
from shadowreplay.replay.ingest.formats.openai_jsonl import OpenAIRequestLog
from shadowreplay.replay.ingest.formats.table import PARQUET_MAGIC, MappedTable
from shadowreplay.replay.ingest.options import FORMATS, IngestOptions
from shadowreplay.replay.ingest.source_files import head_bytes

READERS: dict[str, Callable[[Path, IngestOptions], SourceReader]] = {
    "azure": AzureTrace,
    "mooncake": MooncakeTrace,
    "openai-jsonl": OpenAIRequestLog,
    "table": MappedTable,
}
MOONCAKE_FIELDS = ("input_length", "hash_ids")


def detect_format(path: Path) -> str:
    """The format of `path` judged from its first bytes."""
    head = head_bytes(path)
    if head.startswith(PARQUET_MAGIC):
        return "table"
    text = head.decode("utf-8-sig", errors="replace")
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    if first_line.lstrip().startswith("{"):
        try:
            first = json.loads(first_line)
        except ValueError:
            first = None
        if isinstance(first, dict) and any(name in first for name in MOONCAKE_FIELDS):
            return "mooncake"
        return "openai-jsonl"
    header = next(csv.reader(io.StringIO(first_line)), [])
    if all(name in [column.strip() for column in header] for name in AZURE_COLUMNS):
        return "azure"
    return "table"


def open_reader(path: Path, options: IngestOptions) -> SourceReader:
    """The reader for `path` under `options` (AzureTrace, MooncakeTrace, OpenAIRequestLog or MappedTable)."""
    name = options.format
    if name == "auto":
        name = detect_format(path)
        if name == "azure" and options.column_map:
            name = "table"  # a CSV with a column map is a mapped table
    if name not in READERS:
        raise IngestError(f"unknown format {name!r}; use auto or one of {', '.join(FORMATS)}")
    if options.column_map and name != "table":
        raise IngestError(f"{path}: --map applies to --format table, and this source reads as {name}")
    return READERS[name](path, options)
