"""A lost worker's requests still get their one final row: the runner's `fill_missing_rows` writes a
row of the given status for each (request, target) with none on disk, and for nothing else; a
resumed row's `only_targets` limits it to those targets."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shadowreplay.replay.run.plan import build_plan
from shadowreplay.replay.run.runner import RunSettings, fill_missing_rows, pairs_of, without_final
from shadowreplay.replay.schemas.run_dir import RunDir
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA
from shadowreplay.replay.targets.config import TargetConfig
from tests.support.traffic_logs import log_row
from tests.unit.replay.test_shards import result


def target(name: str) -> TargetConfig:
    return TargetConfig(name=name, kind="openai", base_url="http://127.0.0.1:9/v1", model="m", api="chat")


def test_only_the_pairs_without_a_final_row_get_a_row(tmp_path):
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

    settings = RunSettings(run_dir=tmp_path, run_id="run")
    targets = [target("a"), target("b")]
    left = without_final(plan, targets, run.final_rows())
    assert left.column("request_id").to_pylist() == [ids[1], ids[4], ids[5]]
    assert left.column("only_targets").to_pylist() == [["a"], ["b"], None]
    assert pairs_of(left, targets) == 4
    assert fill_missing_rows(plan, targets, settings, run, "worker_lost", "lost") == 4
    written = pq.read_table(run.results_dir / next(p.name for p in run.result_shards() if "runner" in p.name))
    rows = written.to_pylist()
    assert sorted((r["request_id"], r["target"]) for r in rows) == sorted(
        [(ids[1], "a"), (ids[4], "b"), (ids[5], "a"), (ids[5], "b")]
    )
    assert {r["status"] for r in rows} == {"worker_lost"} and all(r["final"] and r["attempt"] == 1 for r in rows)
    scheduled = dict(zip(ids, plan.column("scheduled_s").to_pylist()))
    assert all(r["scheduled_s"] == scheduled[r["request_id"]] for r in rows), "the plan's schedule, kept"
    assert len(run.final_rows()) == 12 and fill_missing_rows(plan, targets, settings, run) == 0


def test_a_resumed_rows_only_targets_limit_the_rows_filled(tmp_path):
    log = pa.Table.from_pylist([log_row(i, i * 0.1) for i in range(3)], schema=TRAFFIC_LOG_SCHEMA)
    plan = build_plan(log, np.arange(3) * 0.1)
    plan = plan.append_column("only_targets", pa.array([["b"], None, ["a"]], pa.list_(pa.string())))
    run = RunDir(tmp_path)
    settings = RunSettings(run_dir=tmp_path, run_id="run", segment=2)
    assert fill_missing_rows(plan, [target("a"), target("b")], settings, run, "cancelled", "c") == 4
    rows = pq.read_table(run.result_shards()[0]).to_pylist()
    ids = plan.column("request_id").to_pylist()
    assert sorted((r["request_id"], r["target"]) for r in rows) == sorted(
        [(ids[0], "b"), (ids[1], "a"), (ids[1], "b"), (ids[2], "a")]
    )
    assert {r["segment"] for r in rows} == {2} and run.result_shards()[0].name.startswith("part-s2-runner")
