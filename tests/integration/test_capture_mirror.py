"""`shadowreplay capture --mirror` (the CLI, in its own process) on 127.0.0.1 between two scripted
streaming servers (tests/support/faulty_server.py): production and a candidate. Every kept request
also reaches the candidate; its result rows land in LOG_DIR/mirror/ paired by request id with the
captured rows, and `shadowreplay gate LOG_DIR/mirror --baseline production` judges them. A candidate
that stalls sheds the mirror's load (bounded slots and queue, drops counted), never production's."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp
import pyarrow.parquet as pq

from shadowreplay.cli import main
from shadowreplay.replay.run.plan import select_rows
from tests.integration.test_capture_vllm import HOST
from tests.support.faulty_server import FaultyServerThread, Script
from tests.support.run_processes import free_port, start_cli, wait_listening
from tests.support.target_files import write_target

GATES = """
alpha: 0.05
window: 10s
gates:
  - {name: ttft-sla, metric: ttft_p95_ms, max: 2000}
  - {name: errors, metric: error_rate, max_increase: 0.5}
"""


async def drive(base: str, count: int, gap_s: float) -> list[tuple[int, float, str]]:
    """`count` streamed chat requests `gap_s` apart (open loop): status, seconds to the end, answer."""
    results: list[tuple[int, float, str]] = []

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        body = {
            "model": "scripted",
            "messages": [{"role": "user", "content": f"request {i}"}],
            "max_tokens": 4,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.monotonic()
        async with session.post(f"{base}/v1/chat/completions", json=body, headers={"X-Request-Id": f"m-{i}"}) as r:
            raw = await r.read()
        results.append((r.status, time.monotonic() - started, raw.decode()))

    async with aiohttp.ClientSession() as session:
        tasks = []
        for i in range(count):
            tasks.append(asyncio.create_task(one(session, i)))
            await asyncio.sleep(gap_s)
        await asyncio.gather(*tasks)
    return results


def capture_with_mirror(tmp_path: Path, production: str, candidate: Path, *extra: str) -> tuple:
    log_dir, port = tmp_path / "captured", free_port()
    out = tmp_path / "capture.out"
    argv = ["capture", "--listen", f"{HOST}:{port}", "--upstream", production, "-o", str(log_dir)]
    process = start_cli([*argv, "--mirror", str(candidate), "--flush", "0.2s", *extra], out)
    return process, port, log_dir, out


def stop(process, out: Path) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(timeout=60) == 0, out.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    return out.read_text()


def test_every_kept_request_is_mirrored_paired_and_judged(tmp_path, capsys):
    fast = Script(ttft_ms=5, itl_ms=1)
    with FaultyServerThread(fast) as production, FaultyServerThread(Script(ttft_ms=15, itl_ms=2)) as candidate:
        target = write_target(tmp_path / "candidate.yaml", candidate.base_url)
        process, port, log_dir, out = capture_with_mirror(tmp_path, production.base_url.removesuffix("/v1"), target)
        try:
            wait_listening(port, process)
            answers = asyncio.run(drive(f"http://{HOST}:{port}", 30, 0.02))
        finally:
            output = stop(process, out)
    assert [status for status, _, _ in answers] == [200] * 30
    assert "mirror: 30 sent (30 ok), 0 dropped" in output, output

    captured = {r["request_id"]: r for r in select_rows(log_dir).to_pylist()}
    finals = [r for r in pq.read_table(log_dir / "mirror" / "results").to_pylist() if r["final"]]
    assert set(captured) == {f"m-{i}" for i in range(30)} == {r["request_id"] for r in finals}
    for r in finals:  # the candidate's own figures, on the capture's timeline
        assert r["target"] == "faulty" and r["status"] == "ok" and r["ttft_ms"] >= 15
        assert r["output_text"] == " t0 t1 t2 t3" and r["completion_tokens"] == 4
        assert 0 <= r["scheduled_s"] <= r["sent_s"] and r["lateness_ms"] < 1000
    manifest = json.loads(next(log_dir.glob("capture-*.json")).read_text())
    assert manifest["mirror"]["target"] == "faulty" and manifest["mirror"]["by_status"] == {"ok": 30}
    rotations = sorted(p.name for p in log_dir.glob("capture-*.parquet"))
    assert sorted(p.name for p in (log_dir / "mirror" / "requests").glob("*.parquet")) == rotations  # the facts
    run_manifest = json.loads((log_dir / "mirror" / "manifest.json").read_text())
    assert run_manifest["status"] == "completed" and run_manifest["targets"][0]["name"] == "faulty"

    gates = tmp_path / "gates.yaml"
    gates.write_text(GATES)
    capsys.readouterr()
    code = main(
        ["gate", str(log_dir / "mirror"), "--baseline", "production", "--candidate", "faulty"] + ["--gates", str(gates)]
    )
    assert code in (0, 3), capsys.readouterr()
    pairs = pq.read_table(log_dir / "mirror" / "pairs.parquet").to_pylist()
    assert {p["request_id"] for p in pairs} == set(captured)
    for pair in pairs:  # production's side is what the capture recorded; the candidate's what the mirror got
        prod = captured[pair["request_id"]]
        assert pair["b_status"] == "ok" and pair["b_ttft_ms"] == prod["prod_ttft_ms"]
        assert pair["c_status"] == "ok" and pair["c_ttft_ms"] >= 15
    verdict = json.loads((log_dir / "mirror" / "gates.json").read_text())
    assert {g["name"] for g in verdict["gates"]} == {"ttft-sla", "errors"}


def test_a_stalled_candidate_sheds_the_mirror_never_production(tmp_path):
    stalled = Script(ttft_ms=3000, itl_ms=1)
    with FaultyServerThread(Script(ttft_ms=5, itl_ms=1)) as production, FaultyServerThread(stalled) as candidate:
        target = write_target(tmp_path / "candidate.yaml", candidate.base_url)
        process, port, log_dir, out = capture_with_mirror(
            tmp_path, production.base_url.removesuffix("/v1"), target, "--mirror-slots", "2", "--mirror-queue", "3"
        )
        try:
            wait_listening(port, process)
            answers = asyncio.run(drive(f"http://{HOST}:{port}", 40, 0.01))
        finally:
            output = stop(process, out)  # drains the mirror up to --drain, the rest `cancelled`
    assert [status for status, _, _ in answers] == [200] * 40
    assert max(seconds for _, seconds, _ in answers) < 1.5, "production waited for the candidate"
    manifest = json.loads(next(log_dir.glob("capture-*.json")).read_text())
    mirror = manifest["mirror"]
    assert mirror["submitted"] == 40 and mirror["dropped"] >= 30, mirror
    finals = [r for r in pq.read_table(log_dir / "mirror" / "results").to_pylist() if r["final"]]
    assert len(finals) == 40 - mirror["dropped"] == len({r["request_id"] for r in finals})  # one final row each
    assert manifest["recorder"]["written"] == 40 and f"{mirror['dropped']:,} dropped" in output
