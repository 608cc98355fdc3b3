"""Streams result rows to Parquet shards in RUN_DIR/results as they complete.

Rows are buffered and written as closed, self-contained shard files (`part-<worker>-<seq>.parquet`,
written under a temporary name and renamed), every `max_rows` rows or `max_age_s` seconds, so memory
stays bounded however long a run lasts and a crash loses at most one unflushed buffer, never a file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from replay.results import RESULTS_SCHEMA


class ResultShardWriter:
    """Buffers result rows (dicts keyed by RESULTS_SCHEMA names) and writes closed Parquet shards."""

    def __init__(self, results_dir: str | Path, worker: str, max_rows: int = 1000, max_age_s: float = 5.0):
        self.results_dir = Path(results_dir)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.worker = worker
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._buffer: list[dict] = []
        self._oldest: float | None = None
        self._seq = 0
        self.rows_written = 0
        self.files: list[Path] = []

    def add(self, row: dict) -> None:
        """Queue one row; writes a shard when the buffer is full or old enough."""
        if not self._buffer:
            self._oldest = time.monotonic()
        self._buffer.append(row)
        if len(self._buffer) >= self.max_rows:
            self.flush()

    def flush_if_due(self) -> None:
        """Write the buffer if its oldest row has waited `max_age_s`; called periodically."""
        if self._buffer and self._oldest is not None and time.monotonic() - self._oldest >= self.max_age_s:
            self.flush()

    def flush(self) -> None:
        """Write every buffered row to a new closed shard."""
        if not self._buffer:
            return
        table = pa.Table.from_pylist(self._buffer, schema=RESULTS_SCHEMA)
        name = f"part-{self.worker}-{self._seq:05d}.parquet"
        tmp = self.results_dir / f".{name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        final = self.results_dir / name
        os.replace(tmp, final)
        self.files.append(final)
        self.rows_written += len(self._buffer)
        self._seq += 1
        self._buffer = []
        self._oldest = None

    def close(self) -> None:
        self.flush()
