"""The quarantine file: one row per source row that did not make it into the traffic log.

Written next to the log as `LOG.quarantine.parquet` when any row was quarantined (otherwise a
stale file of an earlier ingest to the same log is removed), with
`source_file`, `source_row` (1-based data row, as the reader numbers them), `field` (the source's
name for the offending field; null for a row that did not parse at all), `reason` (a code from
replay/ingest/problems.py REASONS), `detail` (the offending value and why) and `raw` (the row's
source text).
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shadowreplay.replay.ingest.problems import QuarantineRecord
from shadowreplay.replay.schemas.contract import stamp

QUARANTINE_SCHEMA_VERSION = 1
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("field", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("raw", pa.string(), nullable=False),
    ],
    metadata=stamp("traffic_log_quarantine", QUARANTINE_SCHEMA_VERSION),
)
_FLUSH_ROWS = 8192


def quarantine_path(log_path: Path) -> Path:
    """`LOG.parquet` -> `LOG.quarantine.parquet` (other names get `.quarantine.parquet` appended)."""
    if log_path.suffix == ".parquet":
        return log_path.with_suffix(".quarantine.parquet")
    return log_path.with_name(log_path.name + ".quarantine.parquet")


class QuarantineWriter:
    """Streams quarantine records to Parquet (a temporary file that `close` renames into place);
    counts them by reason."""

    def __init__(self, path: Path, source_file: str):
        self.path = path
        self.source_file = source_file
        self.counts: Counter[str] = Counter()
        self._pending: list[QuarantineRecord] = []
        self._partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        self._writer: pq.ParquetWriter | None = None

    def add(self, record: QuarantineRecord) -> None:
        self._pending.append(record)
        self.counts[record.reason] += 1
        if len(self._pending) >= _FLUSH_ROWS:
            self._flush()

    def close(self) -> None:
        """Finish the file (or, with nothing quarantined, remove a stale one)."""
        self._flush()
        if self._writer is None:
            self.path.unlink(missing_ok=True)
            return
        self._writer.close()
        os.replace(self._partial, self.path)

    def abort(self) -> None:
        """Stop without leaving a file (errors while closing a file being discarded are ignored)."""
        try:
            if self._writer is not None:
                with contextlib.suppress(Exception):
                    self._writer.close()
        finally:
            self._partial.unlink(missing_ok=True)

    def _flush(self) -> None:
        if not self._pending:
            return
        records = sorted(self._pending, key=lambda record: record.source_row)
        table = pa.table(
            {
                "source_file": [self.source_file] * len(records),
                "source_row": [record.source_row for record in records],
                "field": [record.field for record in records],
                "reason": [record.reason for record in records],
                "detail": [record.detail for record in records],
                "raw": [record.raw for record in records],
            },
            schema=QUARANTINE_SCHEMA,
        )
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._partial, QUARANTINE_SCHEMA)
        self._writer.write_table(table)
        self._pending.clear()
