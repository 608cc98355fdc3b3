"""Runs that survive, probed as a user meets them: the real `shadowreplay replay` CLI in its own
process on a local Ray (or a real two-node cluster), against the scripted server over 127.0.0.1,
with a worker process, a node or the driver itself SIGKILLed mid-run, Ctrl-C after a worker died,
then `--resume`. Each case ends with exactly one final row per (request, target), counted from the
rows on disk."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from shadowreplay.cli import main
from tests.support.answer_server import AnswerServerThread, question_log
from tests.support.faulty_server import FaultyServerThread, Script
from tests.support.run_processes import kill, start_cli, wait_for_workers, worker_pids
from tests.support.target_files import write_target
from tests.support.traffic_logs import log_row, write_log
from tests.support.two_node_cluster import TwoNodeCluster

REQUESTS = 480
RATE_RPS = 40.0  # 12 s of traffic
SCRIPT = Script(ttft_ms=20, itl_ms=15)  # each request streams for about 100 ms


def finals(run_dir: Path) -> dict[tuple[str, str], dict]:
    """(request_id, target) -> its final row; asserts there is exactly one each."""
    columns = ["request_id", "target", "final", "status", "worker", "segment", "scheduled_s"]
    table = pq.read_table(run_dir / "results", columns=columns)
    rows = table.filter(table.column("final")).to_pylist()
    pairs = {(r["request_id"], r["target"]): r for r in rows}
    assert len(pairs) == len(rows), "two final rows for one pair"
    return pairs


def by_status(pairs: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in pairs.values():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


@pytest.fixture(scope="module")
def server():
    with FaultyServerThread(SCRIPT) as running:
        yield running


@pytest.fixture()
def replay_args(tmp_path, server):
    log = write_log(tmp_path / "log.parquet", [log_row(i, i / RATE_RPS, max_tokens=6) for i in range(REQUESTS)])
    target = write_target(tmp_path / "t.yaml", server.base_url)
    return ["replay", str(log), "--target", str(target), "-o", str(tmp_path / "run"), "--workers", "2"]


def run_to_end(process, timeout_s: float = 180.0) -> int:
    return process.wait(timeout=timeout_s)


def output(path: Path) -> str:
    return path.read_text(errors="replace")


def test_a_killed_worker_loses_only_what_was_in_flight_and_its_unsent_requests_go_to_a_replacement(
    tmp_path, replay_args
):
    process = start_cli(replay_args, tmp_path / "out.txt")
    pids = wait_for_workers(2)
    time.sleep(5.0)
    kill(pids[0])
    killed_at = time.time()
    code = run_to_end(process)
    text = output(tmp_path / "out.txt")
    run = tmp_path / "run"
    pairs = finals(run)
    assert len(pairs) == REQUESTS, text
    counts = by_status(pairs)
    assert "cancelled" not in counts, (counts, text)
    lost = counts.get("worker_lost", 0)
    assert counts["ok"] + lost == REQUESTS, counts
    # In flight when it died, or done within its last flush (2 s at 20 req/s per worker; more where the
    # runner saw the death late: the requests due until then were the dead worker's), at most.
    manifest = json.loads((run / "manifest.json").read_text())
    killed_s = killed_at - manifest["segments"][0]["epoch"]
    lost_scheduled = [r["scheduled_s"] for r in pairs.values() if r["status"] == "worker_lost"]
    assert all(s >= killed_s - 3.0 for s in lost_scheduled), (killed_s, sorted(lost_scheduled)[:5])
    assert lost <= 100, counts
    replaced = [r for r in pairs.values() if r["worker"] and ".r1" in r["worker"]]
    assert len(replaced) > 100, "the dead worker's unsent requests were sent by its replacement"
    assert manifest["status"] == "completed" and manifest["counts"]["rows_by_status"] == counts
    (record,) = manifest["segments"][0]["lost_workers"]
    assert record["worker_lost"] == lost and record["replaced_by"].endswith(".r1")
    assert code == (4 if lost else 0), text
    last = [line for line in text.replace("\r", "\n").splitlines() if " sent " in line][-1]
    assert f"sent {REQUESTS}/{REQUESTS}" in last and (f"worker_lost {lost}" in last or not lost), last
    if lost:
        assert "--resume" in text
        resumed = start_cli(["replay", "--resume", str(run)], tmp_path / "resume.txt")
        assert run_to_end(resumed) == 0, output(tmp_path / "resume.txt")
        after = finals(run)
        assert by_status(after) == {"ok": REQUESTS}
        assert {r["segment"] for r in after.values() if r["status"] == "ok"} == {0, 1}


def report_lines(run: Path, capsys) -> list[str]:
    """`shadowreplay report RUN` as a user runs it: its exit code checked, its output's lines."""
    capsys.readouterr()
    assert main(["report", str(run), "--prices", "none"]) == 0
    return capsys.readouterr().out.splitlines()


def test_a_killed_driver_stops_its_workers_and_resume_replays_exactly_what_has_no_final_row(
    tmp_path, replay_args, server, capsys
):
    process = start_cli(replay_args, tmp_path / "out.txt")
    wait_for_workers(2)
    time.sleep(5.0)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    killed = time.monotonic()
    time.sleep(1.0)
    seen = server.server.requests_seen
    time.sleep(2.0)
    assert server.server.requests_seen == seen, "the dead driver's workers went on sending after 1 s"
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "running"
    before = finals(run)
    # The workers saw the driver go (replay/run/driver_link.py): what they had not done they recorded
    # as cancelled, and committed, before Ray ended them.
    stopped = [row for row in before.values() if row["status"] != "ok"]
    assert len(before) <= REQUESTS and len(stopped) > 100, by_status(before)
    table = pq.read_table(run / "results", columns=["final", "status", "error"])
    cancelled = table.filter(pc.equal(table.column("status"), "cancelled")).column("error").to_pylist()
    assert set(cancelled) == {"the driver was lost before send", "the driver was lost while in flight"}, set(
        cancelled
    )  # unsent, in flight
    # `report` on the killed run says first that it is not whole, and how to take it up.
    lines = report_lines(run, capsys)
    missing = REQUESTS - sum(1 for row in before.values() if row["status"] not in ("cancelled", "worker_lost"))
    assert lines[0].startswith(f"INCOMPLETE: {len(before):,} of {REQUESTS:,} planned (request, target) pairs"), lines
    assert "manifest status running: the run is still going, or its driver was killed" in lines[1], lines
    assert f"resume: shadowreplay replay --resume {run}" in lines, lines
    summary = json.loads((run / "summary.json").read_text())["completeness"]
    assert summary["resumable_pairs"] == missing and not summary["complete"], summary
    deadline = killed + 60
    while worker_pids() and time.monotonic() < deadline:  # Ray ends the orphaned actors
        time.sleep(0.2)
    resumed = start_cli(["replay", "--resume", str(run)], tmp_path / "resume.txt")
    assert run_to_end(resumed) == 0, output(tmp_path / "resume.txt")
    after = finals(run)
    assert len(after) == REQUESTS and by_status(after) == {"ok": REQUESTS}
    ok_before = {pair for pair, row in before.items() if row["status"] == "ok"}
    assert all(after[pair]["segment"] == 0 for pair in ok_before), "what was done is not replayed"
    resumed_pairs = {pair for pair, row in after.items() if row["segment"] == 1}
    assert resumed_pairs == set(after) - ok_before
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and [s["segment"] for s in manifest["segments"]] == [0, 1]
    assert manifest["segments"][1]["pairs"] == len(resumed_pairs)
    assert manifest["segments"][1]["clock_offsets"] and manifest["segments"][1]["epoch"] > manifest["epoch"]
    table = pq.read_table(run / "results", columns=["segment", "lateness_ms", "final"])
    resumed_lateness = table.filter(pc.and_(table.column("final"), pc.equal(table.column("segment"), 1)))
    assert pc.max(resumed_lateness.column("lateness_ms")).as_py() < 1000, "the segment's own epoch: sends on time"
    assert not any("INCOMPLETE" in line for line in report_lines(run, capsys)), "a whole run says nothing of it"
    assert json.loads((run / "summary.json").read_text())["completeness"]["complete"] is True


def test_ctrl_c_after_a_worker_died_exits_130_with_a_manifest_and_one_final_row_per_request(tmp_path, replay_args):
    process = start_cli(replay_args, tmp_path / "out.txt")
    pids = wait_for_workers(2)
    time.sleep(4.0)
    kill(pids[0])
    time.sleep(1.5)
    process.send_signal(signal.SIGINT)
    code = run_to_end(process, 90)
    text = output(tmp_path / "out.txt")
    assert code == 130, text
    assert "Traceback" not in text, text
    run = tmp_path / "run"
    pairs = finals(run)
    assert len(pairs) == REQUESTS
    counts = by_status(pairs)
    assert set(counts) <= {"ok", "cancelled", "worker_lost"} and counts.get("cancelled", 0) > 100, counts
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["counts"]["rows_by_status"] == counts


def test_a_replay_across_a_real_two_node_cluster_survives_losing_a_node(tmp_path, replay_args):
    """Two raylets on this machine (tests/support/two_node_cluster.py), joined with --address: one
    worker on each node, one epoch, per-worker clock offsets and nodes in the manifest; the second
    node is killed mid-run and the run still ends with one final row per request."""
    with TwoNodeCluster() as cluster:
        process = start_cli([*replay_args, "--address", cluster.address], tmp_path / "out.txt")
        wait_for_workers(2)
        time.sleep(4.0)
        cluster.kill_second_node()
        code = run_to_end(process)
        text = output(tmp_path / "out.txt")
        run = tmp_path / "run"
        manifest = json.loads((run / "manifest.json").read_text())
        first = manifest["segments"][0]
        nodes = {w["worker"]: w["node"] for w in first["workers"]}
        assert {nodes["w000"], nodes["w001"]} == set(cluster.nodes.values()), (nodes, cluster.nodes)
        assert len(manifest["cluster"]["nodes"]) == 2 and set(first["clock_offsets"]) == set(nodes)
        (lost,) = first["lost_workers"]
        dead = next(name for name in ("w000", "w001") if nodes[name] == cluster.nodes["second"])
        assert lost["worker"] == dead and nodes[lost["replaced_by"]] == cluster.nodes["head"], (lost, nodes)
        pairs = finals(run)
        assert len(pairs) == REQUESTS, text
        counts = by_status(pairs)
        assert set(counts) <= {"ok", "worker_lost"}, counts
        assert code == (4 if counts.get("worker_lost") else 0), text
        if code == 4:  # on the same cluster, the one node left
            resumed = start_cli(["replay", "--resume", str(run)], tmp_path / "resume.txt")
            assert run_to_end(resumed) == 0, output(tmp_path / "resume.txt")
            assert by_status(finals(run)) == {"ok": REQUESTS}


SHADOW_GATES = """alpha: 0.05
window: 2s
gates:
  - {name: accuracy, metric: accuracy, scorer: {kind: numeric}, max_drop: 0.05}
  - {name: errors, metric: error_rate, max_increase: 0.05}
"""


def test_a_shadow_whose_driver_was_killed_resumes_and_is_judged_on_every_request(tmp_path, tiny_model_dir):
    log = question_log(tmp_path / "questions.parquet", questions=360, rate=40.0)
    gates = tmp_path / "gates.yaml"
    gates.write_text(SHADOW_GATES)
    run = tmp_path / "shadow"
    with AnswerServerThread() as base_server, AnswerServerThread() as cand_server:
        baseline = shadow_target(tmp_path / "base.yaml", "base", base_server.base_url, tiny_model_dir)
        candidate = shadow_target(tmp_path / "cand.yaml", "cand", cand_server.base_url, tiny_model_dir)
        argv = ["shadow", str(log), "--baseline", str(baseline), "--candidate", str(candidate), "--workers", "2"]
        process = start_cli([*argv, "--gates", str(gates), "--prices", "none", "-o", str(run)], tmp_path / "out.txt")
        wait_for_workers(2)
        time.sleep(3.0)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        assert not (run / "gates.json").exists()
        resumed = start_cli(
            ["shadow", "--resume", str(run), "--gates", str(gates), "--prices", "none"], tmp_path / "r.txt"
        )
        code = run_to_end(resumed)
    text = output(tmp_path / "r.txt")
    assert code == 0, text
    pairs = finals(run)
    assert len(pairs) == 2 * 360 and by_status(pairs) == {"ok": 720}
    assert {row["segment"] for row in pairs.values()} == {0, 1}
    report = json.loads((run / "gates.json").read_text())
    assert report["verdict"] == "pass" and report["requests"] == 360


def shadow_target(path: Path, name: str, base_url: str, tokenizer: Path) -> Path:
    lines = [f"name: {name}", "kind: openai", f"base_url: {base_url}", "model: scripted", f"tokenizer: {tokenizer}"]
    path.write_text("\n".join([*lines, "timeouts: {connect_s: 5, first_token_s: 5, total_s: 10}"]) + "\n")
    return path


def test_ctrl_c_during_start_up_exits_130_with_a_cancelled_row_for_every_request(tmp_path, replay_args):
    process = start_cli(replay_args, tmp_path / "out.txt")
    wait_for_workers(2, running=False)  # the actors exist; the run has not begun
    process.send_signal(signal.SIGINT)
    code = run_to_end(process, 90)
    text = output(tmp_path / "out.txt")
    assert code == 130 and "Traceback" not in text, text
    run = tmp_path / "run"
    pairs = finals(run)
    assert len(pairs) == REQUESTS and set(by_status(pairs)) <= {"cancelled", "ok"}, by_status(pairs)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["counts"]["rows_by_status"] == by_status(pairs)


def test_a_sweep_whose_driver_was_killed_resumes_reading_back_its_finished_points(tmp_path, server, capsys):
    """`sweep` SIGKILLed during its second load point; `sweep --resume` reads the first back from its rows,
    sets the unfinished one aside and measures it again, then goes on: the curve of an unbroken sweep."""
    log = write_log(tmp_path / "log.parquet", [log_row(i, i / 10, max_tokens=6) for i in range(40)])
    target = write_target(tmp_path / "t.yaml", server.base_url)
    sweep = tmp_path / "sweep"
    argv = ["sweep", str(log), "--target", str(target), "--from", "10", "--to", "20", "--points", "3"]
    process = start_cli([*argv, "--duration", "4s", "--no-recheck", "-o", str(sweep)], tmp_path / "out.txt")
    deadline = time.monotonic() + 180
    while not list(sweep.glob("points/01-*/results/*.parquet")) and time.monotonic() < deadline:
        assert process.poll() is None, output(tmp_path / "out.txt")
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    first = json.loads(next(sweep.glob("points/00-*/manifest.json")).read_text())
    assert json.loads((sweep / "manifest.json").read_text())["status"] == "running"
    assert not list(sweep.glob("points/01-*/manifest.json")), "killed before the point finished"
    assert main(["report", str(sweep)]) == 2  # a sweep that did not finish: how to take it up
    assert f"shadowreplay sweep --resume {sweep}" in capsys.readouterr().err
    deadline = time.monotonic() + 60
    while worker_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    resumed = start_cli(["sweep", "--resume", str(sweep)], tmp_path / "resume.txt")
    code = run_to_end(resumed)
    text = output(tmp_path / "resume.txt")
    assert code == 0, text
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["reused_points"] == [0] and len(summary["discarded_points"]) == 1, summary
    assert "resumed: points 0 read back from an earlier start, 2 measured now" in text, text
    assert json.loads(next(sweep.glob("points/00-*/manifest.json")).read_text())["run_id"] == first["run_id"]
    curve = pq.read_table(sweep / "curve.parquet").to_pylist()
    assert [p["point"] for p in curve] == [0, 1, 2] and [round(p["offered_rps"], 2) for p in curve] == [
        10.0,
        14.14,
        20.0,
    ]
    for point in curve:  # every point whole: one final row per planned request
        manifest = json.loads((sweep / point["run_dir"] / "manifest.json").read_text())
        assert manifest["status"] == "completed"
        assert len(finals(sweep / point["run_dir"])) == manifest["counts"]["requests"] == point["requests"]
    assert json.loads((sweep / "manifest.json").read_text())["status"] == "completed"
