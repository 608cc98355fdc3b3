"""A worker's share of the plan, handed over in pieces: `PlanPieces`.

The runner writes each worker's share to the run directory (`RunDir.write_plan_shard`, one Parquet
file per worker, `PIECE_ROWS` rows per row group) and gives the worker its path, not its rows: a
run of millions of requests never travels through Ray's object store, and no worker holds its whole
share at once. The worker reads it ahead of the sends on a thread of its own, at most
`PIECES_AHEAD` row groups at a time, only the columns it reads (`UNREAD_PLAN_COLUMNS` stay on
disk); the event loop only slices what was read (zero-copy) and turns `ROWS_PER_CONVERSION` rows at
a time into dicts. The reading thread runs at nice `READER_NICE` (Linux keeps niceness per thread):
on the worker's one core, a send that falls due takes the CPU from it at once. The run directory
is where the workers write their results too, so a cluster's workers need it at the same path on
every node (a shared file system), as they already do for their results.

A `pa.Table` is taken as well (tests and the bench scripts give the rows directly); it is read in
the same pieces, without a thread.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PIECE_ROWS = 2048  # rows per row group of a plan shard on disk, and per piece read ahead
READER_NICE = 19  # the reading thread's niceness: it reads when the event loop does not need the core
PIECES_AHEAD = 2  # pieces read ahead of the sends, at most
# Plan rows turned into dicts at a time: about 6 us a row here, so 1024 at once would hold the loop
# for several milliseconds, and a long plan never sits in memory as Python objects all at once.
ROWS_PER_CONVERSION = 16
# Plan columns no worker reads, left on disk (`arrival_time` alone, as timezone-aware datetimes, cost
# more to convert than all the others together: the worker times by `scheduled_s`).
UNREAD_PLAN_COLUMNS = ("arrival_time", "response_text", "reference")
_END = object()  # the reader's last word: no piece follows


class PlanPieces:
    """One worker's share of the plan, from a plan shard file (read ahead on a thread) or a table."""

    def __init__(self, source: pa.Table | str | Path, *, piece_rows: int = PIECE_ROWS):
        self.source = source
        self.piece_rows = piece_rows
        if isinstance(source, pa.Table):
            self._file: pq.ParquetFile | None = None
            self.num_rows = source.num_rows
            names = source.column_names
        else:
            self._file = pq.ParquetFile(source)
            self.num_rows = self._file.metadata.num_rows
            names = self._file.schema_arrow.names
        self.columns = [name for name in names if name not in UNREAD_PLAN_COLUMNS]
        self._stop = threading.Event()
        self._pieces: queue.Queue = queue.Queue(maxsize=PIECES_AHEAD)
        self._reader: threading.Thread | None = None
        self._taken = False

    # -- the rows --------------------------------------------------------------------------------
    def head(self, count: int) -> list[dict]:
        """The first `count` rows as dicts (read on their own, before the run: the writer's warm-up)."""
        if self._file is None:
            assert isinstance(self.source, pa.Table)
            return self.source.select(self.columns).slice(0, count).to_pylist()
        if self._file.metadata.num_row_groups == 0:
            return []
        # A file of its own: a ParquetFile is not shared between threads (the reader has the other).
        return pq.ParquetFile(self.source).read_row_group(0, columns=self.columns).slice(0, count).to_pylist()

    def start(self) -> PlanPieces:
        """Begin reading ahead (a file only); called before the run, so that the first pieces wait ready."""
        if self._file is not None and self._reader is None:
            self._reader = threading.Thread(target=self._read_ahead, name="plan-pieces", daemon=True)
            self._reader.start()
        return self

    def rows(self) -> Iterator[dict]:
        """Every row, in order, as dicts, `ROWS_PER_CONVERSION` at a time; one pass only."""
        if self._taken:
            raise RuntimeError("a PlanPieces is read once")
        self._taken = True
        for piece in self._each_piece():
            for offset in range(0, piece.num_rows, ROWS_PER_CONVERSION):
                yield from piece.slice(offset, ROWS_PER_CONVERSION).to_pylist()

    def close(self) -> None:
        """Stop reading ahead (the rest is not wanted: a cancelled run)."""
        self._stop.set()
        if self._reader is not None:
            while self._reader.is_alive():  # free a reader blocked on a full queue
                try:
                    self._pieces.get_nowait()
                except queue.Empty:
                    pass
                self._reader.join(timeout=0.05)

    # -- inside --------------------------------------------------------------------------------
    def _each_piece(self) -> Iterator[pa.RecordBatch]:
        if self._file is None:
            assert isinstance(self.source, pa.Table)
            yield from self.source.select(self.columns).to_batches(max_chunksize=self.piece_rows)
            return
        self.start()
        while True:
            piece = self._pieces.get()
            if piece is _END:
                return
            if isinstance(piece, BaseException):
                raise piece
            yield piece

    def _read_ahead(self) -> None:
        assert self._file is not None
        with contextlib.suppress(OSError):  # lowering one's own priority is always allowed; elsewhere, not there
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), READER_NICE)
        try:
            for piece in self._file.iter_batches(batch_size=self.piece_rows, columns=self.columns, use_threads=False):
                if not self._put(piece):
                    return
            self._put(_END)
        except Exception as exc:  # a damaged shard: the worker's loop raises it where it reads
            self._put(exc)

    def _put(self, item: object) -> bool:
        """Queue `item` once there is room; False when the pieces are no longer wanted."""
        while not self._stop.is_set():
            try:
                self._pieces.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False
