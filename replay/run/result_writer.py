"""Streams result rows to Parquet shards in RUN_DIR/results as they complete.

Rows are buffered and written as closed, self-contained shard files (`part-<worker>-<seq>.parquet`,
written under a temporary name and renamed), every `max_rows` rows or `max_age_s` seconds, so memory
stays bounded however long a run lasts and a crash never leaves a half-written file behind.

Two ways to write, one file format:
- inline (`background=False`, the default): `add()` / `flush_if_due()` encode and write the shard in
  the caller's thread. A crash loses at most the one unflushed buffer.
- background (`background=True`, what a replay worker uses): a full or old buffer is handed to one
  writer thread through a bounded queue (at most `MAX_PENDING_SHARDS` buffers wait), so the
  caller (an event loop sending on a schedule) never stalls for the encoding, compression and
  file write (5-50 milliseconds per 1000 rows). The thread works in pieces of about a millisecond
  (`CONVERT_SLICE_ROWS` rows into Arrow, then `PACED_ROW_GROUP_ROWS` rows per Parquet row group)
  and sleeps `PACE_PAUSE_S` after each: a piece holds the GIL, or the CPU, only that long. Where
  the worker has one core to itself, a thread that computed without pausing would keep the event
  loop off the CPU for whole scheduler ticks (4 ms here), and the loop would stamp tokens late.
  A full queue makes the caller wait (back-pressure: memory stays bounded when the disk cannot
  keep up). A crash loses at most the buffers not yet written
  (`MAX_PENDING_SHARDS` + 1), never a file.
A failed write keeps its rows (inline: the error is raised to the caller too); `flush()` and
`close()` write them again in the caller's thread and raise `ResultWriteError` if that fails.
In both modes `flush()` and `close()` return only when every row added before them is in a
closed shard on disk.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shadowreplay.replay.schemas.results import RESULTS_SCHEMA

MAX_PENDING_SHARDS = 4  # background mode: full buffers waiting for the writer thread, at most
CONVERT_SLICE_ROWS = 64  # background mode: rows turned into Arrow per GIL-holding call (about 0.5 ms)
PACED_ROW_GROUP_ROWS = 256  # background mode: rows encoded and written per call (about 1 ms)
PACE_PAUSE_S = 0.001  # background mode: the writer thread sleeps this long between two such calls
COMPRESSION = "zstd"


class ResultWriteError(RuntimeError):
    """Writing a shard failed (and failed again when retried); its rows are kept in memory."""


def rows_to_table(rows: list[dict], slice_rows: int | None = None, pause_s: float = 0.0) -> pa.Table:
    """RESULTS_SCHEMA table of `rows` (dicts keyed by its names). With `slice_rows`, converted that
    many rows per call, sleeping `pause_s` between calls (0: just yielding the GIL) so that another
    thread (the event loop) gets the GIL, and the CPU, between them; the table then has one chunk
    per slice."""
    if slice_rows is None or len(rows) <= slice_rows:
        return pa.Table.from_pylist(rows, schema=RESULTS_SCHEMA)
    batches = []
    for start in range(0, len(rows), slice_rows):
        batches.append(pa.RecordBatch.from_pylist(rows[start : start + slice_rows], schema=RESULTS_SCHEMA))
        time.sleep(pause_s)
    return pa.Table.from_batches(batches, schema=RESULTS_SCHEMA)


def write_parquet(path: Path | pa.NativeFile, rows: list[dict], paced: bool = False) -> None:
    """`rows` as one Parquet file (or stream); `paced`: in pieces with pauses (see the module docstring)."""
    if not paced:
        pq.write_table(rows_to_table(rows), path, compression=COMPRESSION)
        return
    table = rows_to_table(rows, CONVERT_SLICE_ROWS, PACE_PAUSE_S)
    with pq.ParquetWriter(path, RESULTS_SCHEMA, compression=COMPRESSION) as parquet:
        for start in range(0, table.num_rows, PACED_ROW_GROUP_ROWS):
            parquet.write_table(table.slice(start, PACED_ROW_GROUP_ROWS))
            time.sleep(PACE_PAUSE_S)


class ResultShardWriter:
    """Buffers result rows (dicts keyed by RESULTS_SCHEMA names) and writes closed Parquet shards.

    Not thread-safe on the adding side: one thread (or event loop) calls `add`, `flush_if_due`,
    `flush` and `close`; with `background=True` the writing happens in one thread of its own.
    """

    def __init__(
        self,
        results_dir: str | Path,
        worker: str,
        max_rows: int = 1000,
        max_age_s: float = 5.0,
        *,
        background: bool = False,
    ):
        self.results_dir = Path(results_dir)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.worker = worker
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.background = background
        self._buffer: list[dict] = []
        self._oldest: float | None = None
        self._seq = 0
        self._lock = threading.Lock()  # guards rows_written, files, _failed, _error (written by the thread)
        self.rows_written = 0
        self.files: list[Path] = []
        self._failed: list[tuple[int, list[dict]]] = []  # shards whose write failed: (seq, rows), kept for a retry
        self._error: BaseException | None = None
        self._queue: queue.Queue[tuple[int, list[dict]] | None] = queue.Queue(maxsize=MAX_PENDING_SHARDS)
        self._thread: threading.Thread | None = None

    def warm_up(self, sample_rows: list[dict]) -> None:
        """Encode `sample_rows` into a Parquet file in memory, the way the writer thread does, and
        drop it: the first shard of a process otherwise pays pyarrow's first-use costs (measured:
        22 ms for 300 rows, against 5 ms once warm), in the middle of a run, on the core the event
        loop needs."""
        write_parquet(pa.BufferOutputStream(), sample_rows, paced=True)

    def add(self, row: dict) -> None:
        """Queue one row; hands the buffer on (or writes it, inline) when it is full."""
        if not self._buffer:
            self._oldest = time.monotonic()
        self._buffer.append(row)
        if len(self._buffer) >= self.max_rows:
            self._hand_off()

    def flush_if_due(self) -> None:
        """Hand on (or write) the buffer if its oldest row has waited `max_age_s`; called periodically."""
        if self._buffer and self._oldest is not None and time.monotonic() - self._oldest >= self.max_age_s:
            self._hand_off()

    def flush(self) -> None:
        """Write every row added so far to closed shards; returns when they are on disk."""
        self._hand_off()
        if self._thread is not None:
            self._queue.join()
        self._retry_failed()

    def close(self) -> None:
        """Flush, then stop the writer thread."""
        try:
            self.flush()
        finally:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
                self._thread = None

    # -- internals ------------------------------------------------------------------------------
    def _hand_off(self) -> None:
        """Give the buffer a shard number and write it (inline) or queue it for the writer thread."""
        if not self._buffer:
            return
        rows, seq = self._buffer, self._seq
        self._buffer, self._oldest = [], None
        self._seq += 1
        if not self.background:
            try:
                self._write(seq, rows)
            except Exception:
                with self._lock:
                    self._failed.append((seq, rows))  # kept for the next flush()
                raise
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._write_forever, name=f"result-writer-{self.worker}", daemon=True)
            self._thread.start()
        self._queue.put((seq, rows))  # blocks while MAX_PENDING_SHARDS wait: back-pressure

    def _write_forever(self) -> None:
        """The writer thread: write queued shards until the None sentinel; a failure keeps the rows."""
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                seq, rows = item
                try:
                    self._write(seq, rows, paced=True)
                except Exception as exc:  # kept for a retry in flush()/close(), never lost
                    with self._lock:
                        self._failed.append((seq, rows))
                        self._error = exc
            finally:
                self._queue.task_done()

    def _write(self, seq: int, rows: list[dict], paced: bool = False) -> None:
        """One closed shard: encode, write under a temporary name, rename into place. `paced` (the
        writer thread): in pieces of about a millisecond with a pause after each, see the module
        docstring."""
        name = f"part-{self.worker}-{seq:05d}.parquet"
        tmp = self.results_dir / f".{name}.tmp"
        write_parquet(tmp, rows, paced)
        final = self.results_dir / name
        os.replace(tmp, final)
        with self._lock:
            self.files.append(final)
            self.rows_written += len(rows)

    def _retry_failed(self) -> None:
        """Write again, in this thread, the shards whose background write failed; raise if one
        fails again (its rows stay kept for a later flush)."""
        with self._lock:
            failed, self._failed = self._failed, []
            first_error, self._error = self._error, None
        for index, (seq, rows) in enumerate(failed):
            try:
                self._write(seq, rows)
            except Exception as exc:
                with self._lock:
                    self._failed.extend(failed[index:])
                raise ResultWriteError(
                    f"writing result shard {seq} of worker {self.worker} failed ({first_error!r}) and failed again: {exc!r}"
                ) from exc
