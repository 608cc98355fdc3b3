"""A canary key through a real replay (Ray workers, real HTTP over 127.0.0.1) and a report, on every
error path a careless or broken server can produce, must appear nowhere but in request headers:
not in any file under the run directory, not on stdout or stderr, not in Python's logs, not in
Ray's session logs.

The paths: a 200 stream whose answer echoes the key (output text kept); 401, 403, 429 (retried),
500 and 529 whose error bodies echo the request's headers; an error event in the stream that
echoes them; a malformed HTTP response whose header line holds the key (an aiohttp exception
carrying request details); Azure's 401 echoing every header; an OpenAI-compatible 403 echoing
Authorization. The key comes from an environment variable for two targets and from a key file for
the third. The test proves the key was really sent and echoed (the servers saw it, the errors
show the redaction), so it cannot pass by sending nothing.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from shadowreplay.cli import main as shadowreplay_main
from shadowreplay.replay.run.replay_session import ReplayRequest, replay_log
from shadowreplay.replay.run.runner import start_ray
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA
from tests.support.anthropic_server import AnthropicServer
from tests.support.azure_openai_server import AzureOpenAIServer
from tests.support.faulty_server import FaultyServerThread
from tests.support.server_thread import ServerThread

pytestmark = pytest.mark.timeout(240)

KEY_VARIABLE = "SR_CANARY_API_KEY"
ECHO = {"echo_headers_in_error": True}
SCRIPTS = [
    {"echo_key_in_answer": True, "ttft_ms": 5},
    {"status": 401, **ECHO},
    {"status": 403, **ECHO},
    {"status": 429, "retry_after": "0.05", **ECHO},
    {"status": 500, **ECHO},
    {"status": 529, **ECHO},
    {"error_after_tokens": 2, **ECHO},
    {"broken_http": True},
]


def log_rows() -> list[dict]:
    rows = []
    for i, script in enumerate(SCRIPTS):
        rows.append(
            {
                "request_id": f"req-{i:03d}",
                "arrival_time": datetime(2025, 3, 1, tzinfo=UTC) + timedelta(seconds=0.05 * i),
                "session_id": None,
                "api": "chat",
                "messages": json.dumps([{"role": "user", "content": f"Case {i} [[script {json.dumps(script)}]]"}]),
                "prompt": None,
                "params": json.dumps({"max_tokens": 5}),
                "prompt_tokens": 8,
                "completion_tokens": 5,
                "prefix_block_ids": None,
                "tag": "canary",
                "response_text": None,
                "reference": None,
            }
        )
    return rows


def files_holding(root: Path, secret: bytes) -> list[str]:
    """Every regular file under `root` whose bytes contain `secret`."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            try:
                if secret in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue  # a socket or a file removed meanwhile
    return found


@pytest.fixture()
def fresh_ray():
    """Ray started by this test, after the key variable is set: workers of a local Ray instance see
    the environment as it was when Ray started. Shut down afterwards (its processes hold the key)."""
    if ray.is_initialized():
        ray.shutdown()
    yield
    ray.shutdown()


def test_the_canary_key_appears_nowhere(tmp_path, monkeypatch, capfd, caplog, fresh_ray):
    canary = f"sk-canary-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_VARIABLE, canary)
    caplog.set_level(logging.DEBUG)
    secrets_dir = tmp_path / "secrets"  # outside the run directory
    secrets_dir.mkdir()
    key_file = secrets_dir / "azure.key"
    key_file.write_text(canary + "\n")
    log = tmp_path / "log.parquet"
    pq.write_table(pa.Table.from_pylist(log_rows(), schema=TRAFFIC_LOG_SCHEMA), log)
    run_dir = tmp_path / "run"

    with (
        ServerThread(AnthropicServer(api_key=canary)) as anthropic,
        ServerThread(AzureOpenAIServer({"dep"}, api_key="the-right-azure-key", echo_headers_in_401=True)) as azure,
        FaultyServerThread() as openai,
    ):
        timeouts = "timeouts: {connect_s: 2, first_token_s: 3, total_s: 5}"
        targets = [
            tmp_path / "claude.yaml",
            tmp_path / "azure.yaml",
            tmp_path / "openai.yaml",
        ]
        targets[0].write_text(
            f"name: claude\nkind: anthropic\nbase_url: {anthropic.base_url}\nmodel: claude-canary\n"
            f"api_key_env: {KEY_VARIABLE}\n{timeouts}\nretry: {{max_attempts: 2}}\n"
        )
        targets[1].write_text(
            f"name: azure\nkind: azure_openai\nbase_url: {azure.base_url}\nmodel: gpt-4o\n"
            f"api_key_file: {key_file}\nazure: {{deployment: dep, api_version: '2024-10-21'}}\n{timeouts}\n"
        )
        targets[2].write_text(
            f"name: openai\nkind: openai\nbase_url: {openai.base_url}\nmodel: scripted\n"
            f"api_key_env: {KEY_VARIABLE}\n{timeouts}\n"
            "extra_body: {faulty: {status: 403, echo_headers_in_error: true}}\n"
        )
        start_ray(None)  # here, with the key set: the replay's Session leaves a Ray it did not start running
        outcome = replay_log(
            ReplayRequest(log=log, target_files=targets, run_dir=run_dir, workers=2, keep_output_text=True)
        )
        session_dir = Path(ray._private.worker._global_node.get_session_dir_path())  # Ray's logs of this run
        anthropic_headers = anthropic.server.headers
        azure_requests = azure.server.requests_seen
    assert shadowreplay_main(["report", str(run_dir)]) == 0
    captured = capfd.readouterr()

    # The key really went out, and the servers really echoed it back.
    assert sum(outcome.by_status.values()) == 3 * len(SCRIPTS)
    assert anthropic_headers and all(h.get("x-api-key") == canary for h in anthropic_headers)
    assert azure_requests == 0  # every Azure request was refused before the stream (401, headers echoed)
    results = pq.read_table(run_dir / "results").to_pylist()
    redacted = [r for r in results if "[redacted]" in (r["error"] or "") + (r["output_text"] or "")]
    assert {r["target"] for r in redacted} == {"claude", "azure", "openai"}
    claude_statuses = {r["http_status"] for r in results if r["target"] == "claude"}
    assert {200, 401, 403, 429, 500, 529} <= claude_statuses
    assert any(r["status"] == "connection_error" for r in results if r["target"] == "claude")  # the broken response

    # ... and it is nowhere else.
    secret = canary.encode()
    assert files_holding(run_dir, secret) == []
    assert canary not in captured.out and canary not in captured.err
    assert canary not in caplog.text
    assert files_holding(session_dir, secret) == []
    assert (run_dir / "manifest.json").exists() and any((run_dir / "results").glob("*.parquet"))


def test_the_canary_key_appears_nowhere_in_a_sweep(tmp_path, monkeypatch, capfd, caplog, fresh_ray):
    """The same promise for `sweep`: its load points' run directories, manifests, curve, summary and
    page, while every request's error body echoes the key back."""
    canary = f"sk-canary-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_VARIABLE, canary)
    caplog.set_level(logging.DEBUG)
    log = tmp_path / "log.parquet"
    pq.write_table(pa.Table.from_pylist(log_rows()[:2], schema=TRAFFIC_LOG_SCHEMA), log)
    sweep_dir = tmp_path / "sweep"
    with FaultyServerThread() as server:
        target = tmp_path / "openai.yaml"
        target.write_text(
            f"name: openai\nkind: openai\nbase_url: {server.base_url}\nmodel: scripted\n"
            f"api_key_env: {KEY_VARIABLE}\ntimeouts: {{connect_s: 2, first_token_s: 3, total_s: 5}}\n"
            "extra_body: {faulty: {status: 401, echo_headers_in_error: true}}\n"
        )
        argv = ["sweep", str(log), "--target", str(target), "-o", str(sweep_dir)]
        code = shadowreplay_main(argv + ["--from", "4", "--to", "4", "--points", "1", "--duration", "1s"])
    captured = capfd.readouterr()
    assert code == 0, captured.err[-2000:]
    (point,) = (sweep_dir / "points").iterdir()
    results = pq.read_table(point / "results").to_pylist()
    assert results and all(r["http_status"] == 401 for r in results)
    assert all("[redacted]" in (r["error"] or "") for r in results), "the server echoed the key"
    assert json.loads((sweep_dir / "manifest.json").read_text())["status"] == "completed"
    secret = canary.encode()
    assert files_holding(sweep_dir, secret) == []
    assert canary not in captured.out and canary not in captured.err
    assert canary not in caplog.text
