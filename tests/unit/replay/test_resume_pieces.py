"""The pieces `replay --resume` stands on, without Ray: a torn result shard is found and set aside
(its requests then count as missing), `cancelled` and `worker_lost` final rows are retired so the
resumed row is the one final row of its pair, the missing pairs are read back from the plan shards
with `only_targets`, and the DriverLink tells a worker at once that its driver is gone."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shadowreplay.replay.run.driver_link import DriverLink
from shadowreplay.replay.run.plan import build_plan
from shadowreplay.replay.run.plan_pieces import PIECE_ROWS
from shadowreplay.replay.run.replay_session import missing_pairs
from shadowreplay.replay.schemas.contract import METADATA_KIND_KEY
from shadowreplay.replay.schemas.results import RESUMABLE_STATUSES
from shadowreplay.replay.schemas.run_dir import RunDir
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA
from shadowreplay.replay.targets.config import TargetConfig
from tests.support.traffic_logs import log_row
from tests.unit.replay.test_shards import result


def target(name: str) -> TargetConfig:
    return TargetConfig(name=name, kind="openai", base_url="http://127.0.0.1:9/v1", model="m", api="chat")


def planned_run(tmp_path, requests: int = 6) -> tuple[RunDir, list[str]]:
    log = pa.Table.from_pylist([log_row(i, i * 0.1) for i in range(requests)], schema=TRAFFIC_LOG_SCHEMA)
    plan = build_plan(log, np.arange(requests) * 0.1)
    run = RunDir(tmp_path)
    run.write_plan_shard("w000", plan.slice(0, requests // 2), PIECE_ROWS)
    run.write_plan_shard("w001", plan.slice(requests // 2), PIECE_ROWS)
    return run, plan.column("request_id").to_pylist()


def test_a_torn_shard_is_found_set_aside_and_its_requests_count_as_missing(tmp_path):
    run, ids = planned_run(tmp_path)
    for worker, part in (("w000", ids[:3]), ("w001", ids[3:])):
        writer = run.result_writer(worker)
        for request_id in part:
            writer.add(result(0) | {"request_id": request_id, "target": "a"})
        writer.close()
    torn = next(p for p in run.result_shards() if "w001" in p.name)
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])  # a disk that lost the end of it
    (run.results_dir / ".part-w002-00000.parquet.tmp").write_bytes(b"half a write")
    scan = run.scan_results()
    assert [p for p, _ in scan.torn] == [torn] and scan.finals.num_rows == 3
    assert run.set_aside_torn(scan.torn) == [run.results_dir / "torn" / torn.name]
    assert not list(run.results_dir.glob(".*.tmp")) and run.result_shards() == scan.readable
    left = missing_pairs(run, [target("a")])
    assert left.column("request_id").to_pylist() == ids[3:]
    assert left.column("only_targets").to_pylist() == [None] * 3


def test_retired_rows_stay_on_disk_no_longer_final_and_the_shard_keeps_its_contract(tmp_path):
    run, ids = planned_run(tmp_path, 4)
    writer = run.result_writer("w000")
    statuses = {ids[0]: "ok", ids[1]: "cancelled", ids[2]: "worker_lost", ids[3]: "http_error"}
    for request_id, status in statuses.items():
        for name in ("a", "b"):
            writer.add(result(0) | {"request_id": request_id, "target": name, "status": status})
    writer.add(result(0) | {"request_id": ids[0], "target": "a", "final": False, "status": "cancelled"})
    writer.close()
    assert run.retire_final_rows(RESUMABLE_STATUSES) == 4
    (shard,) = run.result_shards()
    table = pq.read_table(shard)
    assert table.num_rows == 9 and table.schema.metadata[METADATA_KIND_KEY] == b"results"
    finals = {(r["request_id"], r["target"]) for r in table.filter(table.column("final")).to_pylist()}
    assert finals == {(ids[0], "a"), (ids[0], "b"), (ids[3], "a"), (ids[3], "b")}
    assert run.retire_final_rows(RESUMABLE_STATUSES) == 0  # nothing left to retire
    left = missing_pairs(run, [target("a"), target("b")])
    assert left.column("request_id").to_pylist() == [ids[1], ids[2]]


def test_missing_pairs_name_the_targets_a_request_still_lacks(tmp_path):
    run, ids = planned_run(tmp_path, 4)
    writer = run.result_writer("w000")
    for request_id, name in ((ids[0], "a"), (ids[0], "b"), (ids[1], "a"), (ids[2], "b")):
        writer.add(result(0) | {"request_id": request_id, "target": name})
    writer.close()
    left = missing_pairs(run, [target("a"), target("b")])
    assert left.column("request_id").to_pylist() == ids[1:]
    assert left.column("only_targets").to_pylist() == [["b"], ["a"], None]
    scheduled = left.column("scheduled_s").to_pylist()
    assert scheduled == sorted(scheduled)


def test_a_worker_learns_at_once_that_its_driver_is_gone_and_not_when_it_closes_itself():
    driver = DriverLink.listen("127.0.0.1")
    lost = threading.Event()
    worker = DriverLink.watch(driver.address, lost.set)
    assert worker is not None
    time.sleep(0.1)
    assert not lost.is_set()
    began = time.monotonic()
    driver.close()  # as the kernel closes a killed process's sockets
    assert lost.wait(5.0) and time.monotonic() - began < 1.0
    worker.close()

    driver = DriverLink.listen("127.0.0.1")
    calm = threading.Event()
    worker = DriverLink.watch(driver.address, calm.set)
    assert worker is not None
    worker.close()  # the worker's run ended first
    driver.close()
    time.sleep(0.2)
    assert not calm.is_set()
    free = DriverLink.listen("127.0.0.1")
    address = free.address
    free.close()
    assert DriverLink.watch(address, calm.set) is None  # nothing listens: no watch, one line
