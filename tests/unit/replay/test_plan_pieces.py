"""A worker's share of the plan, read in pieces from its plan shard (replay/run/plan_pieces.py)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pyarrow as pa
import pytest

from shadowreplay.replay.run.plan import build_plan
from shadowreplay.replay.run.plan_pieces import READER_NICE, ROWS_PER_CONVERSION, UNREAD_PLAN_COLUMNS, PlanPieces
from shadowreplay.replay.schemas.run_dir import RunDir
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA
from tests.support.traffic_logs import log_row


def a_plan(rows: int) -> pa.Table:
    log = pa.Table.from_pylist([log_row(i, i * 0.01) for i in range(rows)], schema=TRAFFIC_LOG_SCHEMA)
    return build_plan(log, np.arange(rows) * 0.01)


def read_rows(plan: pa.Table) -> list[dict]:
    """What a worker should see: every row, in order, without the columns no worker reads."""
    return [{k: v for k, v in row.items() if k not in UNREAD_PLAN_COLUMNS} for row in plan.to_pylist()]


@pytest.mark.parametrize("rows", [0, 1, ROWS_PER_CONVERSION * 3 + 2, 1000])
def test_a_plan_shard_read_in_pieces_gives_every_row_in_order_as_the_table_does(tmp_path, rows):
    plan = a_plan(rows)
    path = RunDir(tmp_path).write_plan_shard("w000", plan, row_group_rows=64)
    assert path == RunDir(tmp_path).plan_shard_path("w000") and not list(path.parent.glob(".*"))
    from_file, from_table = PlanPieces(path, piece_rows=64).start(), PlanPieces(plan, piece_rows=64)
    assert from_file.num_rows == from_table.num_rows == rows
    expected = read_rows(plan)
    assert from_file.head(3) == from_table.head(3) == expected[:3]
    assert list(from_file.rows()) == list(from_table.rows()) == expected, (
        "every column a worker reads, as pyarrow gives it"
    )
    with pytest.raises(RuntimeError, match="read once"):
        next(from_file.rows())


def test_the_reader_stays_a_few_pieces_ahead_and_stops_when_closed(tmp_path):
    path = RunDir(tmp_path).write_plan_shard("w000", a_plan(2000), row_group_rows=50)
    pieces = PlanPieces(path, piece_rows=50).start()
    rows = pieces.rows()
    first = [next(rows) for _ in range(10)]
    assert [r["request_id"] for r in first] == [f"req-{i:03d}" for i in range(10)]
    assert pieces._pieces.qsize() <= 2, "read ahead by PIECES_AHEAD pieces, not the whole shard"
    reader = pieces._reader
    assert reader is not None and reader.native_id is not None
    assert os.getpriority(os.PRIO_PROCESS, reader.native_id) == READER_NICE, "it reads when the loop lets it"
    pieces.close()
    assert not any(t.name == "plan-pieces" and t.is_alive() for t in threading.enumerate())


def test_a_damaged_plan_shard_is_raised_where_the_worker_reads_it(tmp_path):
    path = RunDir(tmp_path).write_plan_shard("w000", a_plan(300), row_group_rows=50)
    pieces = PlanPieces(path, piece_rows=50)  # its footer read
    path.write_bytes(b"\0" * path.stat().st_size)  # then every page overwritten, in place
    with pytest.raises((OSError, pa.ArrowException)):
        list(pieces.rows())
    assert not any(t.name == "plan-pieces" and t.is_alive() for t in threading.enumerate())
