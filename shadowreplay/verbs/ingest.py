"""`shadowreplay ingest SRC -o LOG.parquet`: a trace or request log into the canonical traffic log
(replay/schemas/traffic_log.py), streaming; bad rows go to LOG.quarantine.parquet (replay/ingest/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from shadowreplay.errors import UserError
from shadowreplay.replay.ingest import (
    DEFAULT_RELATIVE_START,
    FORMATS,
    IngestError,
    IngestOptions,
    IngestSummary,
    ingest,
)
from shadowreplay.replay.ingest.times import parse_origin
from shadowreplay.replay.schemas.traffic_log import API_VALUES, COLUMNS

DESCRIPTION = """\
Stream SRC into the traffic log LOG (the shared schema, schema_version in the file metadata, rows
in arrival order). Inputs of any size are read in blocks, never whole; input that is not in
arrival order is sorted in runs and merged, in bounded memory.

Formats (--format auto picks one from the content):
  azure         Azure LLM inference trace CSV: TIMESTAMP (UTC), ContextTokens, GeneratedTokens
  mooncake      Mooncake JSONL: timestamp (ms after --start), input_length, output_length, hash_ids
  openai-jsonl  one request per line: a time (timestamp, arrival_time, time, created_at, created:
                ISO 8601 or epoch seconds; numbers >= 1e11 are ms), the body (request or body:
                messages or prompt, other fields kept as params), optional response (usage,
                choices[0].message.content or .text), optional request_id/id/custom_id,
                session_id, tag, reference
  table         any Parquet or CSV: columns named like traffic-log fields, or mapped with --map

Rows that cannot be used (unparseable time, negative or non-integer token counts, nothing to
replay, invalid messages JSON, duplicate request_id, ...) go to LOG.quarantine.parquet with the
source file, the source row (1-based data row: a CSV header is not counted; JSONL: the line
number), the field, the reason, a detail and the raw row; the good rows go on.

Exit status: 0 when rows were kept; 1 when the source cannot be read, when no row could be kept,
or with --strict when any row was quarantined (the files are still written).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="read a trace or request log into the canonical traffic log (Parquet)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="SRC", type=Path, help="the trace or log (.gz, .bz2, .zst are decompressed)")
    parser.add_argument(
        "-o", "--output", metavar="LOG.parquet", type=Path, required=True, help="the traffic log to write"
    )
    parser.add_argument("--format", choices=("auto", *FORMATS), default="auto", help="source format (default: auto)")
    parser.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="SRC_COL=FIELD",
        help=f"table format: take traffic-log FIELD from column SRC_COL (repeatable); fields: {', '.join(COLUMNS)}",
    )
    parser.add_argument(
        "--start",
        metavar="ISO",
        help=(
            "wall-clock origin of relative times: Mooncake's ms timestamps "
            f"(default {DEFAULT_RELATIVE_START:%Y-%m-%dT%H:%M:%SZ}); "
            "numeric times of request logs and tables become seconds after it (without it they are epoch seconds)"
        ),
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when any row was quarantined")
    parser.add_argument(
        "--api", choices=API_VALUES, default="chat", help="api of rows with neither messages nor prompt (default: chat)"
    )
    parser.add_argument("--tag", help="tag (task, tenant or route) for rows that have none")
    parser.set_defaults(func=run)


def parse_column_map(items: list[str]) -> dict[str, str]:
    """`SRC_COL=FIELD` items -> {SRC_COL: FIELD} (split at the last `=`: column names may hold one)."""
    mapping: dict[str, str] = {}
    for item in items:
        source, sep, target = item.rpartition("=")
        if not sep or not source or not target:
            raise UserError(f"--map {item!r}: expected SRC_COL=FIELD")
        if target not in COLUMNS:
            raise UserError(f"--map {item!r}: {target!r} is not a traffic-log field ({', '.join(COLUMNS)})")
        if source in mapping:
            raise UserError(f"--map: column {source!r} is mapped twice")
        mapping[source] = target
    return mapping


def run(args: argparse.Namespace) -> int:
    try:  # ingest's own errors exit 1 (a source it cannot read), as documented in --help
        start = parse_origin(args.start) if args.start else None
        options = IngestOptions(
            format=args.format, column_map=parse_column_map(args.map), start=start, api=args.api, tag=args.tag
        )
        summary = ingest(args.source, args.output, options)
    except IngestError as exc:
        raise UserError(str(exc), exit_code=1) from None
    print_summary(summary)
    if summary.kept == 0:
        print(f"ingest: no row of {summary.source} could be kept")
        return 1
    return 1 if args.strict and summary.quarantined_total else 0


def print_summary(summary: IngestSummary) -> None:
    order = ""
    if not summary.in_arrival_order:
        order = (
            " (sorted by arrival)"
            if summary.sorted_runs == 1
            else f" (sorted by arrival: {summary.sorted_runs} sorted runs merged)"
        )
    print(f"ingest: {summary.kept} rows kept in {summary.output} ({summary.format}){order}")
    if summary.quarantined_total:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(summary.quarantined.items()))
        print(f"ingest: {summary.quarantined_total} rows quarantined in {summary.quarantine} ({reasons})")
