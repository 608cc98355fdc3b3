"""Ingest: turning logs and traces of many shapes into the canonical traffic log
(replay/schemas/traffic_log.py), streaming, with every bad row quarantined rather than lost.

Formats (one module each): `azure` (Azure LLM inference trace CSV), `mooncake` (Mooncake JSONL
trace), `openai-jsonl` (OpenAI-style request logs), `table` (any Parquet or CSV with a column
mapping); `auto` picks one from the content (replay/ingest/formats/detect.py).
"""

from shadowreplay.replay.ingest.errors import IngestError
from shadowreplay.replay.ingest.formats.detect import detect_format
from shadowreplay.replay.ingest.options import DEFAULT_RELATIVE_START, FORMATS, IngestOptions, IngestSummary
from shadowreplay.replay.ingest.pipeline import ingest
from shadowreplay.replay.ingest.problems import REASONS
from shadowreplay.replay.ingest.quarantine import QUARANTINE_SCHEMA, quarantine_path

__all__ = [
    "DEFAULT_RELATIVE_START",
    "FORMATS",
    "QUARANTINE_SCHEMA",
    "REASONS",
    "IngestError",
    "IngestOptions",
    "IngestSummary",
    "detect_format",
    "ingest",
    "quarantine_path",
]
