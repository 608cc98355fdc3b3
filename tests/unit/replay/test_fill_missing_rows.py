"""A lost worker's requests still get their one final row: the runner's `fill_missing_rows` writes a
`cancelled` row for each (request, target) with none on disk, and for nothing else."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shadowreplay.replay.run.plan import build_plan
from shadowreplay.replay.run.runner import fill_missing_rows
from shadowreplay.replay.schemas.run_dir import RunDir
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA
from shadowreplay.replay.targets.config import TargetConfig
from tests.support.traffic_logs import log_row
from tests.unit.replay.test_shards import result


def target(name: str) -> TargetConfig:
    return TargetConfig(name=name, kind="openai", base_url="http://127.0.0.1:9/v1", model="m", api="chat")


def test_only_the_pairs_without_a_final_row_get_a_cancelled_row(tmp_path):
    log = pa.Table.from_pylist([log_row(i, i * 0.1) for i in range(6)], schema=TRAFFIC_LOG_SCHEMA)
    plan = build_plan(log, np.arange(6) * 0.1)
    ids = plan.column("request_id").to_pylist()
    run = RunDir(tmp_path)
    writer = run.result_writer("w000")
    for i, request_id in enumerate(ids):
        for name in ("a", "b"):
            if (i, name) in {(1, "a"), (4, "b"), (5, "a"), (5, "b")}:
                continue  # lost with the worker
            writer.add(result(i) | {"request_id": request_id, "target": name})
    writer.add(result(1) | {"request_id": ids[1], "target": "a", "final": False})  # an attempt, not the final row
    writer.close()

    assert fill_missing_rows(plan, [target("a"), target("b")], "run", run) == 4
    written = pq.read_table(run.results_dir / next(p.name for p in run.result_shards() if "runner" in p.name))
    rows = written.to_pylist()
    assert sorted((r["request_id"], r["target"]) for r in rows) == sorted(
        [(ids[1], "a"), (ids[4], "b"), (ids[5], "a"), (ids[5], "b")]
    )
    assert {r["status"] for r in rows} == {"cancelled"} and all(r["final"] and r["attempt"] == 1 for r in rows)
    scheduled = dict(zip(ids, plan.column("scheduled_s").to_pylist()))
    assert all(r["scheduled_s"] == scheduled[r["request_id"]] for r in rows), "the plan's schedule, kept"
    assert len(run.final_rows()) == 12 and fill_missing_rows(plan, [target("a"), target("b")], "run", run) == 0
