"""Streaming the kept rows into the traffic log, in arrival order, with bounded memory.

Rows arrive in source order. They are gathered into runs (up to `run_rows` rows or `run_bytes`
bytes), each run is sorted stably by arrival_time and written as a row group of a temporary file
next to the output, on a background thread (so reading the next batch overlaps the write). If every
run was already sorted and each began no earlier than the previous one ended (the common case), the
temporary file is the log and is renamed into place. Otherwise the runs are merged
(replay/ingest/run_merge.py) into the log. Either way the log's rows are ordered by
(arrival_time, source order).
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from shadowreplay.replay.ingest.parquet_output import arrival_micros, open_log_writer, stable_order
from shadowreplay.replay.ingest.run_merge import merge_runs
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA

DEFAULT_RUN_ROWS = 1 << 20
DEFAULT_RUN_BYTES = 64 << 20
DEFAULT_MERGE_MEMORY_BYTES = 64 << 20


@dataclass(frozen=True)
class LogWriteResult:
    rows: int
    in_arrival_order: bool
    runs: int


class TrafficLogWriter:
    """Writes a traffic log from tables of rows in source order (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        run_rows: int = DEFAULT_RUN_ROWS,
        run_bytes: int = DEFAULT_RUN_BYTES,
        merge_memory_bytes: int = DEFAULT_MERGE_MEMORY_BYTES,
    ):
        self.path = path
        self.run_rows = run_rows
        self.run_bytes = run_bytes
        self.merge_memory_bytes = merge_memory_bytes
        self._runs_path = path.with_name(f".{path.name}.runs-{os.getpid()}")
        self._merged_path = path.with_name(f".{path.name}.merged-{os.getpid()}")
        self._writer = open_log_writer(self._runs_path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="traffic-log-writer")
        self._in_flight: Future | None = None
        self._buffer: list[pa.Table] = []
        self._buffered_rows = 0
        self._buffered_bytes = 0
        self._run_lengths: list[int] = []
        self._last_micros: int | None = None
        self._in_order = True

    def write(self, rows: pa.Table) -> None:
        """Add rows (TRAFFIC_LOG_SCHEMA, source order)."""
        if rows.schema != TRAFFIC_LOG_SCHEMA:
            rows = rows.cast(TRAFFIC_LOG_SCHEMA)
        if not rows.num_rows:
            return
        self._buffer.append(rows)
        self._buffered_rows += rows.num_rows
        self._buffered_bytes += rows.nbytes
        if self._buffered_rows >= self.run_rows or self._buffered_bytes >= self.run_bytes:
            self._flush_runs(final=False)

    def close(self) -> LogWriteResult:
        """Finish the log at `path` (renamed or merged into place)."""
        try:
            self._flush_runs(final=True)
            self._wait()
            self._writer.close()
        finally:
            self._executor.shutdown(wait=True)
        rows = sum(self._run_lengths)
        if self._in_order or len(self._run_lengths) == 1:  # one run is sorted on its own
            os.replace(self._runs_path, self.path)
        else:
            try:
                merge_runs(
                    self._runs_path,
                    self._run_lengths,
                    self._merged_path,
                    output_rows=self.run_rows,
                    memory_bytes=self.merge_memory_bytes,
                )
                os.replace(self._merged_path, self.path)
            finally:
                self._runs_path.unlink(missing_ok=True)
                self._merged_path.unlink(missing_ok=True)
        return LogWriteResult(rows, self._in_order, len(self._run_lengths))

    def abort(self) -> None:
        """Stop without leaving any file (errors while closing a file being discarded are ignored)."""
        try:
            self._executor.shutdown(wait=True, cancel_futures=True)
            with contextlib.suppress(Exception):
                self._writer.close()
        finally:
            self._runs_path.unlink(missing_ok=True)
            self._merged_path.unlink(missing_ok=True)

    def _flush_runs(self, final: bool) -> None:
        """Hand full runs (or, when `final`, everything buffered) to the background writer."""
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer)
        self._buffer, self._buffered_rows, self._buffered_bytes = [], 0, 0
        rows_per_run = self.run_rows
        if table.nbytes > self.run_bytes:
            rows_per_run = max(1, min(rows_per_run, table.num_rows * self.run_bytes // max(1, table.nbytes)))
        start = 0
        while table.num_rows - start >= rows_per_run or (final and start < table.num_rows):
            run = table.slice(start, rows_per_run)
            start += run.num_rows
            self._wait()
            self._in_flight = self._executor.submit(self._write_run, run)
        if start < table.num_rows:
            rest = table.slice(start)
            self._buffer, self._buffered_rows, self._buffered_bytes = [rest], rest.num_rows, rest.nbytes

    def _wait(self) -> None:
        if self._in_flight is not None:
            self._in_flight.result()
            self._in_flight = None

    def _write_run(self, run: pa.Table) -> None:
        micros = arrival_micros(run)
        order = stable_order(micros)
        if order is not None:
            self._in_order = False
            run = run.take(order)
            micros = micros[order]
        if self._last_micros is not None and micros[0] < self._last_micros:
            self._in_order = False
        self._last_micros = int(micros[-1])
        self._writer.write_table(run, row_group_size=run.num_rows)
        self._run_lengths.append(run.num_rows)
