"""The one shard writer: rows of any data contract (results, telemetry, later captured traffic)
streamed to closed, self-contained Parquet shards, committed atomically.

Rows (dicts keyed by the schema's names) are buffered and written as a shard every `max_rows` rows
or `max_age_s` seconds, so memory stays bounded however long a run lasts. A growing writer
(`grow=True`, results) commits its rows every `max_age_s` too, but into the same shard, rewritten
whole each time with what it held and the new rows, until the shard holds `max_rows` rows: a slow
run of days commits every few seconds without leaving a file every few seconds (a 48-hour shadow
at 5 requests/s would leave 170,000 of them), and a reader sees the shard's earlier or its later
version, both whole. It keeps the open shard's rows in memory (at most `max_rows`); a rewrite
costs the encoding of at most `max_rows` rows every `max_age_s`. A shard is committed in
three steps: written under a hidden temporary name (`.NAME.tmp`, which no reader lists), flushed to
the disk (fsync), then renamed into place. A crash, of the process or the machine, therefore never
leaves a torn file that looks whole: a shard is on disk complete, or not at all.

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
  keep up). A crash loses at most the buffers not yet written (`MAX_PENDING_SHARDS` + 1).
A failed write keeps its rows (inline: the error is raised to the caller too); `flush()` and
`close()` write them again in the caller's thread and raise `ShardWriteError` if that fails.
In both modes `flush()` and `close()` return only when every row added before them is in a
committed shard. `add` may be called from several threads at once.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shadowreplay.errors import ShadowReplayError

MAX_PENDING_SHARDS = 4  # background mode: full buffers waiting for the writer thread, at most
CONVERT_SLICE_ROWS = 64  # background mode: rows turned into Arrow per GIL-holding call (about 0.5 ms)
PACED_ROW_GROUP_ROWS = 256  # background mode: rows encoded and written per call (about 1 ms)
PACE_PAUSE_S = 0.001  # background mode: the writer thread sleeps this long between two such calls
COMPRESSION = "zstd"
SHARD_SUFFIX = ".parquet"

Row = Any  # a dict keyed by the schema's names, unless the writer is given its own `to_table`
ToTable = Callable[[list[Row]], pa.Table]


class ShardWriteError(ShadowReplayError):
    """Writing a shard failed (and failed again when retried); its rows are kept in memory."""


def rows_to_table(
    rows: list[Row],
    schema: pa.Schema,
    slice_rows: int | None = None,
    pause_s: float = 0.0,
    to_table: ToTable | None = None,
) -> pa.Table:
    """`schema` table of `rows` (dicts, or whatever `to_table` turns into a table). With
    `slice_rows`, converted that many rows per call, sleeping `pause_s` between calls (0: just
    yielding the GIL) so that another thread (the event loop) gets the GIL, and the CPU, between
    them; the table then has one chunk per slice."""
    convert = to_table or (lambda part: pa.Table.from_pylist(part, schema=schema))
    if slice_rows is None or len(rows) <= slice_rows:
        return convert(rows)
    tables = []
    for start in range(0, len(rows), slice_rows):
        tables.append(convert(rows[start : start + slice_rows]))
        time.sleep(pause_s)
    return pa.concat_tables(tables)


def write_parquet(
    path: Path | pa.NativeFile,
    rows: list[Row],
    schema: pa.Schema,
    paced: bool = False,
    to_table: ToTable | None = None,
    dictionary_columns: Sequence[str] = (),
) -> None:
    """`rows` as one Parquet file (or stream); `paced`: in pieces with pauses (see the module docstring).
    Only `dictionary_columns` are dictionary-encoded: columns of few distinct values that readers filter
    on. Every other column is written plain: dictionary encoding of a column of distinct values (ids,
    texts, times) costs pyarrow more time, with the GIL held, than it saves after zstd (a 1,000-row
    results shard: 4.4 ms and 233 KB with every column, 2.7 ms and 191 KB with none)."""
    dictionary = [name for name in dictionary_columns if name in schema.names]
    if not paced:
        table = rows_to_table(rows, schema, to_table=to_table)
        pq.write_table(table, path, compression=COMPRESSION, use_dictionary=dictionary)
        return
    table = rows_to_table(rows, schema, CONVERT_SLICE_ROWS, PACE_PAUSE_S, to_table)
    with pq.ParquetWriter(path, schema, compression=COMPRESSION, use_dictionary=dictionary) as parquet:
        for start in range(0, table.num_rows, PACED_ROW_GROUP_ROWS):
            parquet.write_table(table.slice(start, PACED_ROW_GROUP_ROWS))
            time.sleep(PACE_PAUSE_S)


def commit_file(tmp: Path, final: Path) -> None:
    """Make the written file `tmp` durable, then rename it to `final` (atomic on POSIX file
    systems), then make the rename durable: `final` is either absent or whole, even after a crash."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    try:
        dir_fd = os.open(final.parent, os.O_RDONLY)
    except OSError:  # a file system without directory handles: the rename is still atomic
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def is_committed_shard(path: Path) -> bool:
    """A shard a reader may trust: a `.parquet` file that is not a hidden temporary one."""
    return path.suffix == SHARD_SUFFIX and not path.name.startswith(".")


def committed_shards(directory: Path) -> list[Path]:
    """The committed Parquet shards in `directory`, by name (temporary files are not listed)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and is_committed_shard(p))


class ShardWriter:
    """Buffers rows of one schema and commits closed Parquet shards `<shard_prefix>-<seq>.parquet`
    in `directory`; give each writer of a run its own prefix."""

    def __init__(
        self,
        directory: str | Path,
        schema: pa.Schema,
        shard_prefix: str,
        max_rows: int = 1000,
        max_age_s: float = 5.0,
        *,
        background: bool = False,
        to_table: ToTable | None = None,
        dictionary_columns: Sequence[str] = (),
        grow: bool = False,
    ):
        """`to_table` turns a buffer of rows into a `schema` table; by default rows are dicts keyed
        by the schema's names. A writer that buffers leaner rows (telemetry: tuples) gives its own.
        `dictionary_columns`: see write_parquet. `grow`: see the module docstring."""
        self.directory = Path(directory)
        self.to_table = to_table
        self.dictionary_columns = tuple(dictionary_columns)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.shard_prefix = shard_prefix
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.background = background
        self.grow = grow
        self._open_rows: list[Row] = []  # grow: the rows already committed to shard _seq, written again with the next
        self._written: dict[int, int] = {}  # rows in each shard's committed version (guarded by _lock)
        self._buffer: list[Row] = []
        self._oldest: float | None = None
        self._seq = 0
        self._buffer_lock = threading.Lock()  # guards _buffer, _oldest, _seq (adding threads)
        self._lock = threading.Lock()  # guards rows_written, files, _failed, _error (written by the thread)
        self.rows_written = 0
        self.files: list[Path] = []
        self._failed: list[tuple[int, list[Row]]] = []  # shards whose write failed: (seq, rows), kept for a retry
        self._error: BaseException | None = None
        self._queue: queue.Queue[tuple[int, list[Row]] | None] = queue.Queue(maxsize=MAX_PENDING_SHARDS)
        self._thread: threading.Thread | None = None

    def warm_up(self, sample_rows: list[Row]) -> None:
        """Encode `sample_rows` into a Parquet file in memory, the way the writer thread does, and
        drop it: the first shard of a process otherwise pays pyarrow's first-use costs (measured:
        22 ms for 300 rows, against 5 ms once warm), in the middle of a run, on the core the event
        loop needs."""
        write_parquet(pa.BufferOutputStream(), sample_rows, self.schema, True, self.to_table, self.dictionary_columns)

    def add(self, row: Row) -> None:
        """Queue one row; hands the buffer on (or writes it, inline) when it is full."""
        with self._buffer_lock:
            if not self._buffer:
                self._oldest = time.monotonic()
            self._buffer.append(row)
            full = len(self._open_rows) + len(self._buffer) >= self.max_rows
        if full:
            self._hand_off()

    def buffered(self) -> int:
        """Rows added and not yet handed to the disk."""
        with self._buffer_lock:
            return len(self._buffer)

    def flush_if_due(self) -> int:
        """Hand on (or write) the buffer if its oldest row has waited `max_age_s`; called
        periodically. Returns the rows committed by this call (inline mode; 0 when handed on)."""
        with self._buffer_lock:
            due = bool(self._buffer) and self._oldest is not None
            due = due and time.monotonic() - (self._oldest or 0.0) >= self.max_age_s
        return self._hand_off(keep_open=self.grow) if due else 0

    def flush(self) -> int:
        """Commit every row added so far; returns when they are on disk, with the rows committed
        since the call began."""
        before = self.rows_written
        self._hand_off(keep_open=self.grow)
        if self._thread is not None:
            self._queue.join()
        self._retry_failed()
        return self.rows_written - before

    def close(self) -> int:
        """Flush, then stop the writer thread; returns the rows committed by the final flush."""
        try:
            before = self.rows_written
            self._hand_off()  # the open shard closed (grow) with the last rows
            self.flush()
            return self.rows_written - before
        finally:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
                self._thread = None

    # -- internals ------------------------------------------------------------------------------
    def _hand_off(self, keep_open: bool = False) -> int:
        """Give the buffer a shard number and write it (inline) or queue it for the writer thread;
        returns the rows written here (inline). `keep_open` (grow): the shard is written with the
        rows it holds so far and stays open for more, under the same number."""
        with self._buffer_lock:
            if not self._buffer:
                return 0
            rows, seq = self._open_rows + self._buffer, self._seq
            self._buffer, self._oldest = [], None
            if keep_open and len(rows) < self.max_rows:
                self._open_rows = rows
            else:
                self._open_rows = []
                self._seq += 1
        if not self.background:
            try:
                self._write(seq, rows)
            except BaseException:  # Ctrl-C in the middle of a write too: the rows are not lost
                with self._lock:
                    self._failed.append((seq, rows))  # kept for the next flush()
                raise
            return len(rows)
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._write_forever, name=f"shard-writer-{self.shard_prefix}", daemon=True
            )
            self._thread.start()
        self._queue.put((seq, rows))  # blocks while MAX_PENDING_SHARDS wait: back-pressure
        return 0

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

    def _write(self, seq: int, rows: list[Row], paced: bool = False) -> None:
        """One committed shard: encode, write under a temporary name, fsync, rename into place.
        `paced` (the writer thread): in pieces of about a millisecond with a pause after each, see
        the module docstring. A version of a growing shard older than the one on disk (a failed
        write retried after a later one) is not written again."""
        with self._lock:
            written = self._written.get(seq)
        if written is not None and written >= len(rows):
            return
        name = f"{self.shard_prefix}-{seq:05d}{SHARD_SUFFIX}"
        tmp = self.directory / f".{name}.tmp"
        write_parquet(tmp, rows, self.schema, paced, self.to_table, self.dictionary_columns)
        final = self.directory / name
        commit_file(tmp, final)
        with self._lock:
            if written is None:
                self.files.append(final)
            self._written[seq] = len(rows)
            self.rows_written += len(rows) - (written or 0)

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
                raise ShardWriteError(
                    f"writing shard {seq} of {self.shard_prefix} in {self.directory} failed "
                    f"({first_error!r}) and failed again: {exc!r}"
                ) from exc
