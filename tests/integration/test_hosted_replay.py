"""Replays on Ray against hosted-API wire formats served locally: an Anthropic-format target, an
Azure OpenAI target and an OpenAI-compatible one in one run, with comparable rows, retries as rows
of their own (Retry-After and Anthropic's reset headers honoured), translation errors reported per
request, client-side rate limits visible in lateness, a retry budget, and a target taken from the
environment (blue/green) recorded in the manifest."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shadowreplay.replay.run.replay_session import ReplayRequest, replay_log
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA
from tests.support.anthropic_server import AnthropicServer
from tests.support.azure_openai_server import AzureOpenAIServer
from tests.support.faulty_server import FaultyServerThread
from tests.support.server_thread import ServerThread

pytestmark = pytest.mark.timeout(180)

KEY = "sk-ant-replay-7d3b91"
OUTPUT_TOKENS = 6


def log_row(i: int, offset_s: float, script: dict | None = None, **params) -> dict:
    text = f"Request {i}: say something."
    if script:
        text += f" [[script {json.dumps(script)}]]"
    return {
        "request_id": f"req-{i:03d}",
        "arrival_time": datetime(2025, 3, 1, tzinfo=UTC) + timedelta(seconds=offset_s),
        "session_id": None,
        "api": "chat",
        "messages": json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]),
        "prompt": None,
        "params": json.dumps({"max_tokens": OUTPUT_TOKENS, "temperature": 0.5, **params}),
        "prompt_tokens": 12,
        "completion_tokens": OUTPUT_TOKENS,
        "prefix_block_ids": None,
        "tag": "hosted",
        "response_text": None,
        "reference": None,
    }


def write_log(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=TRAFFIC_LOG_SCHEMA), path)
    return path


def write_yaml(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def results_by_target(run_dir: Path) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for row in pq.read_table(run_dir / "results").to_pylist():
        grouped[row["target"]].append(row)
    return grouped


def attempts_of(rows: list[dict], request_id: str) -> list[dict]:
    return sorted((r for r in rows if r["request_id"] == request_id), key=lambda r: r["attempt"])


@pytest.fixture(scope="module")
def servers():
    with (
        ServerThread(AnthropicServer(api_key=KEY)) as anthropic,
        ServerThread(AzureOpenAIServer({"gpt-4o-prod"}, api_key=KEY)) as azure,
        FaultyServerThread() as openai,
    ):
        yield anthropic, azure, openai


@pytest.fixture()
def key_file(tmp_path) -> Path:
    # Ray workers read keys in their own processes; a file reaches them whenever Ray was started.
    path = tmp_path / "provider.key"
    path.write_text(KEY + "\n")
    return path


def test_anthropic_azure_and_openai_targets_in_one_run(tmp_path, servers, key_file, monkeypatch):
    anthropic, azure, openai = servers
    rows = [log_row(i, 0.05 * i, {"ttft_ms": 20, "itl_ms": 5}) for i in range(4)]
    rows.append(log_row(4, 0.2, {"status": 429, "retry_after": "0.3", "fail_attempts": 1}))
    rows.append(log_row(5, 0.25, {"status": 429, "ratelimit_reset_in_s": 0.8, "fail_attempts": 1}))
    rows.append(log_row(6, 0.3, logit_bias={"42": 5}))  # no Anthropic equivalent
    rows.append(log_row(7, 0.35, {"status": 529, "fail_attempts": 2}))
    log = write_log(tmp_path / "log.parquet", rows)

    # The Anthropic target is the blue/green candidate: provider, model and endpoint from the environment.
    monkeypatch.setenv("MODEL_PROVIDER", "anthropic")
    monkeypatch.setenv("MODEL_ID", "claude-green")
    monkeypatch.setenv("INFERENCE_ENDPOINT", anthropic.base_url)
    monkeypatch.setenv("INFERENCE_KEY_FILE", str(key_file))
    claude = write_yaml(
        tmp_path / "claude.yaml",
        [
            "name: claude",
            "provider: ${MODEL_PROVIDER}",
            "model: ${MODEL_ID}",
            "base_url: ${INFERENCE_ENDPOINT}",
            "api_key_file: ${INFERENCE_KEY_FILE}",
            "timeouts: {connect_s: 2, first_token_s: 3, total_s: 5}",
            "retry: {max_attempts: 3, backoff_s: 0.05}",
        ],
    )
    azure_target = write_yaml(
        tmp_path / "azure.yaml",
        [
            "name: azure",
            "kind: azure_openai",
            f"base_url: {azure.base_url}",
            "model: gpt-4o",
            f"api_key_file: {key_file}",
            "azure: {deployment: gpt-4o-prod, api_version: '2024-10-21'}",
            "timeouts: {connect_s: 2, first_token_s: 3, total_s: 5}",
            "rate_limits: {rpm: 600, burst_s: 0.1}",  # 10 requests/s for the run, a bucket of one
            "extra_body: {faulty: {ttft_ms: 20, itl_ms: 5}}",
        ],
    )
    openai_target = write_yaml(
        tmp_path / "openai.yaml",
        [
            "name: openai",
            "kind: openai",
            f"base_url: {openai.base_url}",
            "model: scripted",
            "timeouts: {connect_s: 2, first_token_s: 3, total_s: 5}",
            "extra_body: {faulty: {ttft_ms: 20, itl_ms: 5}}",
        ],
    )
    run_dir = tmp_path / "run"
    outcome = replay_log(
        ReplayRequest(log=log, target_files=[claude, azure_target, openai_target], run_dir=run_dir, workers=2)
    )
    by_target = results_by_target(run_dir)
    ids = sorted(r["request_id"] for r in rows)

    # One final row per request and target, whatever happened.
    for target in ("claude", "azure", "openai"):
        finals = [r for r in by_target[target] if r["final"]]
        assert sorted(r["request_id"] for r in finals) == ids, target
    assert sum(outcome.by_status.values()) == 3 * len(rows)

    # Comparable rows: the same request measured the same way on every target.
    for target in ("claude", "azure", "openai"):
        for row in by_target[target]:
            if row["final"] and row["status"] == "ok":
                assert row["completion_tokens"] == OUTPUT_TOKENS and len(row["token_times_ms"]) == OUTPUT_TOKENS, (
                    target,
                    row,
                )
                assert row["token_times_ms"] == sorted(row["token_times_ms"])
                assert row["finish_reason"] == "length"
                assert row["sent_s"] >= row["scheduled_s"]
    claude_rows = by_target["claude"]
    for i in range(4):
        row = attempts_of(claude_rows, f"req-{i:03d}")[0]
        assert row["status"] == "ok" and 20.0 <= row["ttft_ms"] < row["e2e_ms"]
        assert row["prompt_tokens"] > 0

    # Retries: rows of their own, only the last final; the server's wait honoured.
    after_retry_after = attempts_of(claude_rows, "req-004")
    assert [(r["attempt"], r["final"], r["http_status"]) for r in after_retry_after] == [
        (1, False, 429),
        (2, True, 200),
    ]
    assert after_retry_after[1]["sent_s"] - after_retry_after[0]["done_s"] >= 0.3
    assert after_retry_after[1]["lateness_ms"] >= 300  # latency from the scheduled time shows the wait
    after_reset = attempts_of(claude_rows, "req-005")
    assert [(r["attempt"], r["final"]) for r in after_reset] == [(1, False), (2, True)] and after_reset[1][
        "status"
    ] == "ok"
    assert (
        after_reset[1]["sent_s"] - after_reset[0]["done_s"] >= 0.5
    )  # anthropic-ratelimit-requests-reset, ~0.8 s ahead
    overloaded = attempts_of(claude_rows, "req-007")
    assert [r["http_status"] for r in overloaded] == [529, 529, 200] and [r["final"] for r in overloaded] == [
        False,
        False,
        True,
    ]

    # A request Anthropic cannot express: its own row with the reason; the other targets answer it.
    untranslatable = attempts_of(claude_rows, "req-006")
    assert len(untranslatable) == 1 and untranslatable[0]["status"] == "http_error"
    assert "logit_bias" in untranslatable[0]["error"] and untranslatable[0]["sent_s"] is None
    assert attempts_of(by_target["openai"], "req-006")[0]["status"] == "ok"

    # Azure: every request through the deployment path, paced by the client-side limit: each of the
    # two workers has half of 10/s with a bucket of one, so its k-th send is at least 0.2 x k s in.
    assert all(r["status"] == "ok" for r in by_target["azure"])
    assert {s[:2] for s in azure.server.seen} == {("gpt-4o-prod", "2024-10-21")}
    for worker in ("w000", "w001"):
        sent = sorted(r["sent_s"] for r in by_target["azure"] if r["worker"] == worker)
        assert sent, worker
        for k, t in enumerate(sent):
            assert t >= 0.2 * k - 1e-3, (worker, k, sent)
    lateness = sorted(r["lateness_ms"] for r in by_target["azure"])
    assert lateness[-1] >= 250  # 8 requests in 0.35 s through 10/s: the last ones queued, and it shows

    # The manifest records what the blue/green target resolved to, and where each value came from.
    manifest = json.loads((run_dir / "manifest.json").read_text())
    recorded = {t["name"]: t for t in manifest["targets"]}["claude"]
    assert (recorded["kind"], recorded["provider"], recorded["model"], recorded["base_url"]) == (
        "anthropic",
        "anthropic",
        "claude-green",
        anthropic.base_url,
    )
    assert recorded["api_key_file"] == str(key_file)
    assert recorded["from_env"] == {
        "provider": "MODEL_PROVIDER",
        "model": "MODEL_ID",
        "base_url": "INFERENCE_ENDPOINT",
        "api_key_file": "INFERENCE_KEY_FILE",
    }
    assert KEY not in (run_dir / "manifest.json").read_text()


def test_a_retry_budget_caps_retries_in_a_429_storm(tmp_path, servers, key_file):
    anthropic, _, _ = servers
    rows = [log_row(i, 0.01 * i, {"status": 429, "retry_after": "0.05"}) for i in range(6)]
    log = write_log(tmp_path / "log.parquet", rows)
    target = write_yaml(
        tmp_path / "claude.yaml",
        [
            "name: claude",
            "kind: anthropic",
            f"base_url: {anthropic.base_url}",
            "model: claude-test",
            f"api_key_file: {key_file}",
            "timeouts: {connect_s: 2, first_token_s: 3, total_s: 5}",
            "retry: {max_attempts: 3, budget: {ratio: 0, min_per_minute: 2}}",
        ],
    )
    run_dir = tmp_path / "run"
    replay_log(ReplayRequest(log=log, target_files=[target], run_dir=run_dir, workers=1))
    results = pq.read_table(run_dir / "results").to_pylist()
    assert len(results) == len(rows) + 2  # six first attempts and the two retries the budget allows
    finals = [r for r in results if r["final"]]
    assert sorted(r["request_id"] for r in finals) == sorted(r["request_id"] for r in rows)
    assert all(r["http_status"] == 429 for r in results)
    for row in finals:
        if row["attempt"] < 3:
            assert "retry budget exhausted" in row["error"], row
