"""The bounded-memory fallback for sources that are not in arrival order: merging sorted runs.

The run writer leaves a file of runs, each sorted by arrival_time (stably: equal times keep source
order) and written as consecutive row groups. The merge reads every run in small chunks and
repeatedly emits all rows up to a bound that no unread row can undercut: the smallest
(last time of the current chunk, run number) over the runs. Ties across runs go to the earlier run,
so the merged order is by (arrival_time, source order). Memory: one chunk per run, sized so that all
chunks together stay near `memory_bytes`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shadowreplay.replay.ingest.parquet_output import arrival_micros, open_log_writer

MIN_CHUNK_ROWS = 1024
# A row takes about twice its Parquet size in Arrow's memory, and each chunk is held about twice
# (the reader's buffers, then the merged copy).
MEMORY_PER_PARQUET_BYTE = 4


class _RunCursor:
    """The unread part of one run: its current chunk and where reading stopped in it."""

    def __init__(self, number: int, batches):
        self.number = number
        self._batches = batches
        self.chunk: pa.Table | None = None
        self.micros = np.empty(0, dtype=np.int64)
        self.offset = 0
        self.advance()

    def advance(self) -> None:
        """Load the next non-empty chunk (chunk None at the end of the run)."""
        for batch in self._batches:
            if batch.num_rows:
                self.chunk = pa.Table.from_batches([batch])
                self.micros = arrival_micros(batch)
                self.offset = 0
                return
        self.chunk = None

    def last_micros(self) -> int:
        return int(self.micros[-1])

    def take_until(self, bound: int, inclusive: bool) -> pa.Table:
        """Remove and return the rows up to `bound` (inclusive or not) from the current chunk."""
        assert self.chunk is not None, "take_until on a run that has ended"
        rest = self.micros[self.offset :]
        count = int(np.searchsorted(rest, bound, side="right" if inclusive else "left"))
        taken = self.chunk.slice(self.offset, count)
        self.offset += count
        if self.offset == len(self.micros):
            self.advance()
        return taken


def merge_runs(
    runs_path: Path, run_lengths: list[int], destination: Path, *, output_rows: int, memory_bytes: int
) -> None:
    """Merge the sorted runs of `runs_path` (consecutive row ranges of the given lengths) into a
    traffic log at `destination`, in row groups of about `output_rows`."""
    runs_file = pq.ParquetFile(runs_path, pre_buffer=False, buffer_size=1 << 20)
    metadata = runs_file.metadata
    row_bytes = max(
        1,
        sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)) // max(1, metadata.num_rows),
    )
    chunk_rows = max(MIN_CHUNK_ROWS, memory_bytes // (row_bytes * MEMORY_PER_PARQUET_BYTE) // max(1, len(run_lengths)))
    groups_of_run = _row_groups_by_run(metadata, run_lengths)
    cursors = [
        _RunCursor(number, runs_file.iter_batches(batch_size=chunk_rows, row_groups=groups, use_threads=False))
        for number, groups in enumerate(groups_of_run)
    ]
    cursors = [cursor for cursor in cursors if cursor.chunk is not None]
    writer = open_log_writer(destination)
    pending: list[pa.Table] = []
    pending_rows = 0
    try:
        while cursors:
            bound_cursor = min(cursors, key=lambda cursor: (cursor.last_micros(), cursor.number))
            bound = bound_cursor.last_micros()
            pieces = [cursor.take_until(bound, inclusive=cursor.number <= bound_cursor.number) for cursor in cursors]
            cursors = [cursor for cursor in cursors if cursor.chunk is not None]
            pieces = [piece for piece in pieces if piece.num_rows]
            merged = pa.concat_tables(pieces)
            pending.append(
                merged if len(pieces) == 1 else merged.take(np.argsort(arrival_micros(merged), kind="stable"))
            )
            pending_rows += merged.num_rows
            if pending_rows >= output_rows:
                table = pa.concat_tables(pending)
                writer.write_table(table, row_group_size=table.num_rows)
                pending, pending_rows = [], 0
        if pending:
            table = pa.concat_tables(pending)
            writer.write_table(table, row_group_size=table.num_rows)
    finally:
        writer.close()


def _row_groups_by_run(metadata: pq.FileMetaData, run_lengths: list[int]) -> list[list[int]]:
    """The row groups making up each run (runs are consecutive row ranges)."""
    groups: list[list[int]] = [[] for _ in run_lengths]
    run_ends = np.cumsum(run_lengths)
    start = 0
    for index in range(metadata.num_row_groups):
        run = int(np.searchsorted(run_ends, start, side="right"))
        groups[run].append(index)
        start += metadata.row_group(index).num_rows
    return groups
