"""The Ray runner end to end against a local server that misbehaves on purpose (tests/support/faulty_server.py):
real Ray workers, real HTTP over 127.0.0.1, every scheduled request ending in exactly one final row
with the right status, sessions in order, retries as their own rows, the schedule kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shadowreplay.replay.run.replay_session import ReplayRequest, replay_log
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA
from tests.support.faulty_server import FaultyServerThread, Script
from tests.support.target_files import write_target
from tests.support.traffic_logs import log_row, write_log


def read_results(run_dir: Path) -> list[dict]:
    return pq.read_table(run_dir / "results").to_pylist()


@pytest.fixture(scope="module")
def faulty_server():
    with FaultyServerThread() as server:
        yield server


EXPECTED = {
    "none": "ok",
    "reset": "connection_error",
    "stall": "timeout",
    "invalid_json": "stream_error",
    "malformed_sse": "stream_error",
    "stream_error": "stream_error",
    "eof": "stream_error",
}


def test_every_request_gets_one_final_row_with_the_right_status(tmp_path, faulty_server):
    rows, expected = [], {}
    i = 0
    for _ in range(3):
        for fault, status in EXPECTED.items():
            faulty = {"ttft_ms": 20, "itl_ms": 5, "fault": fault, "fault_after_tokens": 2}
            if fault == "stall":
                faulty["stall_ms"] = 5000  # past the 3 s total limit
            rows.append(log_row(i, 0.05 * i, faulty))
            expected[f"req-{i:03d}"] = status
            i += 1
        rows.append(log_row(i, 0.05 * i, {"status": 500}))
        expected[f"req-{i:03d}"] = "http_error"
        i += 1
    log = write_log(tmp_path / "log.parquet", rows)
    target = write_target(tmp_path / "t.yaml", faulty_server.base_url)
    run_dir = tmp_path / "run"
    outcome = replay_log(ReplayRequest(log=log, target_files=[target], run_dir=run_dir, workers=2))

    results = read_results(run_dir)
    finals = [r for r in results if r["final"]]
    assert sorted(r["request_id"] for r in finals) == sorted(expected)  # one each, none lost
    for row in finals:
        assert row["status"] == expected[row["request_id"]], row
    assert {r["worker"] for r in finals} == {"w000", "w001"}
    assert sum(outcome.by_status.values()) == len(expected)

    ok = [r for r in finals if r["status"] == "ok"]
    for row in ok:
        assert row["completion_tokens"] == 6 and len(row["token_times_ms"]) == 6
        assert row["token_times_ms"] == sorted(row["token_times_ms"])
        assert 20.0 <= row["ttft_ms"] < row["e2e_ms"]
        assert row["sent_s"] >= row["scheduled_s"] and row["lateness_ms"] >= 0
        assert row["first_token_s"] <= row["last_token_s"] <= row["done_s"]
    http = [r for r in finals if r["status"] == "http_error"]
    assert all(r["http_status"] == 500 for r in http)

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["counts"]["scheduled"] == len(expected)
    assert manifest["counts"]["rows_by_status"] == outcome.by_status
    assert set(manifest["clock_offsets"]) == {"w000", "w001"}


def test_sessions_replay_in_order_and_the_schedule_is_kept(tmp_path, faulty_server):
    # Three requests of one session arrive 10 ms apart but each takes ~200 ms: each must wait
    # for the previous one to finish. An unrelated request keeps its own time.
    slow = {"ttft_ms": 100, "itl_ms": 20}
    rows = [log_row(i, 0.01 * i, slow, session="s1") for i in range(3)]
    rows.append(log_row(3, 0.5, {"ttft_ms": 10}))
    log = write_log(tmp_path / "log.parquet", rows)
    target = write_target(tmp_path / "t.yaml", faulty_server.base_url)
    run_dir = tmp_path / "run"
    replay_log(ReplayRequest(log=log, target_files=[target], run_dir=run_dir, workers=2))
    by_id = {r["request_id"]: r for r in read_results(run_dir)}
    assert all(r["status"] == "ok" for r in by_id.values())
    for earlier, later in (("req-000", "req-001"), ("req-001", "req-002")):
        assert by_id[later]["sent_s"] >= by_id[earlier]["done_s"]
    assert by_id["req-002"]["lateness_ms"] > 300  # it waited for its session, and says so
    assert by_id["req-003"]["scheduled_s"] == pytest.approx(0.5)
    assert by_id["req-003"]["sent_s"] >= 0.5


def test_retries_are_rows_of_their_own_and_honour_retry_after(tmp_path, faulty_server):
    rows = [log_row(0, 0.0, {"status": 429, "retry_after": "0.3"}), log_row(1, 0.0, {"ttft_ms": 5})]
    log = write_log(tmp_path / "log.parquet", rows)
    target = write_target(tmp_path / "t.yaml", faulty_server.base_url, retry={"max_attempts": 3})
    run_dir = tmp_path / "run"
    replay_log(ReplayRequest(log=log, target_files=[target], run_dir=run_dir, workers=1))
    attempts = sorted((r for r in read_results(run_dir) if r["request_id"] == "req-000"), key=lambda r: r["attempt"])
    assert [r["attempt"] for r in attempts] == [1, 2, 3]
    assert [r["final"] for r in attempts] == [False, False, True]
    assert all(r["http_status"] == 429 for r in attempts)
    for first, second in zip(attempts, attempts[1:]):
        assert second["sent_s"] - first["done_s"] >= 0.3
    other = [r for r in read_results(run_dir) if r["request_id"] == "req-001"]
    assert len(other) == 1 and other[0]["final"] and other[0]["status"] == "ok"


def test_speed_compresses_the_schedule(tmp_path, faulty_server):
    rows = [log_row(i, 1.0 * i, {"ttft_ms": 1}) for i in range(4)]
    log = write_log(tmp_path / "log.parquet", rows)
    target = write_target(tmp_path / "t.yaml", faulty_server.base_url)
    run_dir = tmp_path / "run"
    from shadowreplay.cli import main

    assert (
        main(["replay", str(log), "--target", str(target), "-o", str(run_dir), "--workers", "1", "--speed", "4"]) == 0
    )
    scheduled = sorted(r["scheduled_s"] for r in read_results(run_dir))
    assert scheduled == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert json.loads((run_dir / "manifest.json").read_text())["selection"]["schedule"] == "TraceScaled(speed=4)"


def test_volume_adds_requests_on_the_logs_own_timeline(tmp_path, faulty_server, capsys):
    """--volume 2.5x: every request two or three times over 1 s of log (two whole copies, a thinned third),
    each copy's conversations within 1 s after the log's (ten mean gaps, at most 1 s), a session moving as one."""
    rows = [log_row(i, 0.25 * i, {"ttft_ms": 1}, session="s" if i < 2 else None) for i in range(5)]
    log = write_log(tmp_path / "log.parquet", rows)
    target = write_target(tmp_path / "t.yaml", faulty_server.base_url)
    run_dir = tmp_path / "run"
    from shadowreplay.cli import main

    argv = ["replay", str(log), "--target", str(target), "-o", str(run_dir), "--workers", "1", "--volume", "2.5x"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "volume 2.5x: 2 copies superposed (each within 1 s of the log's time) and a copy thinned to 0.5x" in printed
    results = read_results(run_dir)
    by_id = {r["request_id"]: r for r in results}
    assert all(r["status"] == "ok" for r in results)
    for i in range(5):  # the log's request at its own time, its copies within 1 s after it
        assert by_id[f"req-{i:03d}"]["scheduled_s"] == pytest.approx(0.25 * i)
        assert 0.25 * i <= by_id[f"req-{i:03d}~1"]["scheduled_s"] < 0.25 * i + 1.0
    third = sorted(rid for rid in by_id if rid.endswith("~2"))
    assert all(int(rid[4:7]) * 0.25 <= by_id[rid]["scheduled_s"] < int(rid[4:7]) * 0.25 + 1.0 for rid in third)
    assert ("req-000~2" in by_id) == ("req-001~2" in by_id)  # one session: thinned whole
    copy = by_id["req-001~1"]["scheduled_s"] - by_id["req-000~1"]["scheduled_s"]
    assert copy == pytest.approx(0.25)  # and shifted as one: its turns keep their spacing
    selection = json.loads((run_dir / "manifest.json").read_text())["selection"]
    volume = selection["volume"]
    assert volume["method"] == "superposed" and volume["copies"] == 2 and volume["factor"] == 2.5
    assert volume["log_requests"] == 5 and volume["requests"] == len(results) == 10 + len(third)
    assert selection["schedule"] == "TraceScaled(speed=1)"


def test_cancel_gives_every_unfinished_request_a_cancelled_row(tmp_path, faulty_server) -> None:
    import threading
    import time as _time

    from shadowreplay.replay.run.plan import arrival_offsets_s, build_plan, select_rows
    from shadowreplay.replay.run.worker import ReplayWorker, WorkerSettings
    from shadowreplay.replay.targets.config import load_target

    # 2 quick requests, 2 that stream slowly (in flight at the cancel), 4 scheduled far later.
    rows = [log_row(i, 0.0, {"ttft_ms": 1}) for i in range(2)]
    rows += [log_row(i, 0.0, {"ttft_ms": 10, "itl_ms": 1000}) for i in range(2, 4)]
    rows += [log_row(i, 30.0, {"ttft_ms": 1}) for i in range(4, 8)]
    log = write_log(tmp_path / "log.parquet", rows)
    selected = select_rows(log)
    plan = build_plan(selected, arrival_offsets_s(selected))
    target = load_target(write_target(tmp_path / "t.yaml", faulty_server.base_url))
    worker = ReplayWorker(WorkerSettings(run_id="r", worker="w0", run_dir=str(tmp_path)), [target], plan)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(worker.run(_time.time() + 0.2)))
    thread.start()
    _time.sleep(1.5)
    worker.cancel()
    thread.join(timeout=10)
    assert not thread.is_alive()
    finals = {r["request_id"]: r for r in pq.read_table(tmp_path / "results").to_pylist() if r["final"]}
    assert len(finals) == 8
    assert [finals[f"req-{i:03d}"]["status"] for i in range(8)] == ["ok"] * 2 + ["cancelled"] * 6
    assert all(finals[f"req-{i:03d}"]["sent_s"] is None for i in range(4, 8))  # never sent
    assert finals["req-002"]["first_token_s"] is not None  # partial timings are kept
    assert result == {"ok": 2, "cancelled": 6}


def test_closed_loop_keeps_exactly_n_requests_in_flight_and_stops_at_the_duration(tmp_path, faulty_server):
    from shadowreplay.replay.run.plan import build_plan, select_rows
    from shadowreplay.replay.run.runner import RunSettings, run_plan, start_ray
    from shadowreplay.replay.targets.config import load_target

    rows = [log_row(i, 0.0, {"ttft_ms": 50, "itl_ms": 10}) for i in range(200)]
    log = write_log(tmp_path / "log.parquet", rows)
    selected = select_rows(log)
    plan = build_plan(selected, [0.0] * selected.num_rows)
    target = load_target(write_target(tmp_path / "t.yaml", faulty_server.base_url))
    start_ray(None)
    run_dir = tmp_path / "run"
    outcome = run_plan(plan, [target], RunSettings(run_dir=run_dir, workers=2, concurrency=3, duration_s=1.5))
    results = pq.read_table(run_dir / "results").to_pylist()
    assert 6 <= len(results) < 200 and all(r["status"] == "ok" for r in results)
    assert outcome.lost_rows == 0 and sum(outcome.by_status.values()) == len(results)
    assert max(r["scheduled_s"] for r in results) < 1.5  # no request taken after the duration
    events = sorted([(r["sent_s"], 1) for r in results] + [(r["done_s"], -1) for r in results])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    assert peak == 3


# -- the worker itself, without Ray (replay/run/worker.py) ------------------------------------
def worker_for(tmp_path: Path, base_url: str, rows: int, offsets: list[float] | None = None, **settings):
    """A worker for `rows` requests sent at `offsets` (default: a millisecond apart), and its plan."""
    from shadowreplay.replay.run.plan import build_plan
    from shadowreplay.replay.run.worker import ReplayWorker, WorkerSettings
    from shadowreplay.replay.targets.config import TargetConfig, Timeouts

    offsets = offsets or [i * 0.001 for i in range(rows)]
    log = pa.Table.from_pylist([log_row(i, offsets[i]) for i in range(rows)], schema=TRAFFIC_LOG_SCHEMA)
    plan = build_plan(log, np.asarray(offsets))
    target = TargetConfig(
        name="faulty",
        kind="openai",
        base_url=base_url,
        model="scripted",
        api="chat",
        timeouts=Timeouts(connect_s=2, first_token_s=2, total_s=3),
    )
    worker_settings = WorkerSettings(run_id="r", worker="w0", run_dir=str(tmp_path), **settings)
    return ReplayWorker(worker_settings, [target], plan), plan


def test_clock_mapping_maps_perf_counter_onto_the_run_timeline_and_back():
    from shadowreplay.replay import clock as clock_mapping

    clock = clock_mapping.ClockMapping(wall_minus_perf=100.0, epoch=1000.0)
    assert clock.to_run_s(950.0) == pytest.approx(50.0)
    assert clock.to_perf(clock.to_run_s(123.25)) == pytest.approx(123.25)
    assert clock.to_run_s(None) is None


def test_a_run_cancelled_before_its_start_writes_every_row_and_restores_the_process(tmp_path):
    import gc
    import sys
    import time

    switch_interval = sys.getswitchinterval()
    worker, plan = worker_for(tmp_path, "http://127.0.0.1:9/v1", 40, flush_rows=7)
    worker.cancel()
    by_status = worker.run(epoch=time.time() + 30)
    assert by_status == {"cancelled": 40}
    rows = read_results(tmp_path)
    assert sorted(r["request_id"] for r in rows if r["final"]) == sorted(plan.column("request_id").to_pylist())
    assert {r["status"] for r in rows} == {"cancelled"}
    assert sys.getswitchinterval() == switch_interval, "the GIL switch interval is the process's again"
    assert gc.get_freeze_count() == 0, "no object stays frozen after the run"


def test_a_worker_run_keeps_one_connection_per_concurrent_stream(tmp_path, faulty_server):
    """Requests one after another reuse one keep-alive connection (a new TCP connection per request
    would cost the loop ~0.3-1 ms each and show in TTFT)."""
    import time

    from shadowreplay.replay.run.worker import ReplayWorker

    worker, plan = worker_for(tmp_path, faulty_server.base_url, 12, offsets=[0.2 + i * 0.05 for i in range(12)])
    ports_before = len(faulty_server.server.client_ports)
    assert isinstance(worker, ReplayWorker)
    assert worker.run(epoch=time.time() + 0.3) == {"ok": 12}
    ports = faulty_server.server.client_ports[ports_before:]
    assert len(ports) == 12 and len(set(ports)) == 1


@pytest.mark.parametrize("busy_poll", [False, True])
def test_busy_poll_keeps_the_loop_polling_for_the_whole_run(tmp_path, faulty_server, busy_poll):
    """With busy_poll the event loop never sleeps: the process uses about a core for as long as the
    run lasts; without it, a sparse run leaves the CPU nearly idle. Every row is written either way."""
    import gc
    import time

    worker, plan = worker_for(
        tmp_path, faulty_server.base_url, 6, offsets=[i * 0.2 for i in range(6)], busy_poll=busy_poll
    )
    # The run begins with a full garbage collection (worker.py: gc.freeze). In a worker's own process
    # that is quick; in this one, after other tests, the heap is large enough for it to take a good
    # part of this short run's CPU (measured: 36% without busy_poll after tests/unit). What exists
    # now is set aside first, as in a worker's process.
    gc.collect()
    gc.freeze()
    cpu, wall = time.process_time(), time.perf_counter()
    assert worker.run(epoch=time.time() + 0.2) == {"ok": 6}
    share = (time.process_time() - cpu) / (time.perf_counter() - wall)
    if busy_poll:
        assert share > 0.3, f"the loop polled only {share:.0%} of the run's wall time"
    else:
        assert share < 0.3, f"a sparse run without busy_poll kept the CPU {share:.0%} busy"
    assert sorted(r["request_id"] for r in read_results(tmp_path)) == sorted(plan.column("request_id").to_pylist())


def test_a_target_with_two_endpoints_balances_its_requests_and_each_row_names_its_replica(tmp_path):
    """Two scripted servers as two replicas of one target: each gets about half of the requests (one
    worker, least in flight, then in turn), and every row's `replica` is the server that really
    served it (counted by each server)."""
    rows = [log_row(i, i * 0.02, {"ttft_ms": 60, "itl_ms": 5}, max_tokens=4) for i in range(40)]
    log = write_log(tmp_path / "log.parquet", rows)
    with FaultyServerThread() as first, FaultyServerThread() as second:
        target = tmp_path / "t.yaml"
        target.write_text(
            "name: fleet\nkind: openai\nmodel: scripted\n"
            f"endpoints: [{first.base_url}, {second.base_url}]\n"
            "timeouts: {connect_s: 2, first_token_s: 2, total_s: 3}\n"
        )
        replay_log(ReplayRequest(log=log, target_files=[target], run_dir=tmp_path / "run", workers=1))
        served = [first.server.requests_seen, second.server.requests_seen]
    results = pq.read_table(tmp_path / "run" / "results").to_pylist()
    assert len(results) == 40 and {r["status"] for r in results} == {"ok"}
    by_replica = [sum(r["replica"] == i for r in results) for i in (0, 1)]
    assert by_replica == served, "each row names the replica that served it"
    assert abs(by_replica[0] - by_replica[1]) <= 4, by_replica
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["targets"][0]["endpoints"] == [first.base_url, second.base_url]


def test_the_report_gives_each_replicas_figures_from_its_own_rows(tmp_path, capsys):
    """Two replicas of one target, the second 100 ms slower to its first token: `report` shows each replica's
    requests and latency percentiles, equal to a recomputation from the rows it served."""
    rows = [log_row(i, i * 0.03, max_tokens=4) for i in range(40)]
    log = write_log(tmp_path / "log.parquet", rows)
    with (
        FaultyServerThread(Script(ttft_ms=20, itl_ms=5)) as fast,
        FaultyServerThread(Script(ttft_ms=120, itl_ms=5)) as slow,
    ):
        target = tmp_path / "t.yaml"
        target.write_text(
            f"name: fleet\nkind: openai\nmodel: scripted\nendpoints: [{fast.base_url}, {slow.base_url}]\n"
            "timeouts: {connect_s: 2, first_token_s: 2, total_s: 3}\n"
        )
        replay_log(ReplayRequest(log=log, target_files=[target], run_dir=tmp_path / "run", workers=1))
    from shadowreplay.cli import main

    capsys.readouterr()  # the replay's own lines
    assert main(["report", str(tmp_path / "run"), "--json"]) == 0
    replicas = json.loads(capsys.readouterr().out)["targets"]["fleet"]["replicas"]
    results = [r for r in pq.read_table(tmp_path / "run" / "results").to_pylist() if r["final"]]
    assert [entry["replica"] for entry in replicas] == [0, 1]
    for entry in replicas:
        mine = [r for r in results if r["replica"] == entry["replica"]]
        ttft = [r["ttft_ms"] for r in mine if r["status"] == "ok"]
        assert entry["requests"] == len(mine) and entry["errors"] == 0 and entry["error_rate"] == 0.0
        assert entry["ttft_p50_ms"] == pytest.approx(np.percentile(ttft, 50))
        assert entry["ttft_p95_ms"] == pytest.approx(np.percentile(ttft, 95))
        assert entry["e2e_p95_ms"] == pytest.approx(np.percentile([r["e2e_ms"] for r in mine], 95))
    assert replicas[1]["ttft_p50_ms"] > replicas[0]["ttft_p50_ms"] + 80  # the slow replica shows


def test_a_retry_goes_to_the_next_replica_so_an_overloaded_one_is_passed_over(tmp_path):
    """One replica answers every request 503 (overloaded), the other streams: with one retry and no
    backoff, each request that met the overloaded one is retried on the other, and every final row is
    ok, on replica 1."""
    from tests.support.faulty_server import Script

    rows = [log_row(i, i * 0.05, max_tokens=2) for i in range(10)]  # one at a time: the turn decides
    log = write_log(tmp_path / "log.parquet", rows)
    with FaultyServerThread(Script(status=503)) as overloaded, FaultyServerThread() as healthy:
        target = tmp_path / "t.yaml"
        target.write_text(
            "name: fleet\nkind: openai\nmodel: scripted\n"
            f"endpoints: [{overloaded.base_url}, {healthy.base_url}]\n"
            "timeouts: {connect_s: 2, first_token_s: 2, total_s: 3}\n"
            "retry: {max_attempts: 2, backoff_s: 0}\n"
        )
        replay_log(ReplayRequest(log=log, target_files=[target], run_dir=tmp_path / "run", workers=1))
    results = pq.read_table(tmp_path / "run" / "results").to_pylist()
    finals = [r for r in results if r["final"]]
    assert len(finals) == 10 and {(r["status"], r["replica"]) for r in finals} == {("ok", 1)}
    retried = [r for r in results if not r["final"]]
    assert retried and {(r["http_status"], r["replica"]) for r in retried} == {(503, 0)}
