"""`shadowreplay locust`: headless Locust runs of loadgen/locust/user.py against tests/support/faulty_server.py.

Locust runs in its own process (it monkey-patches the standard library for gevent), bounded by its
own `-t` and a subprocess timeout; the scripted server runs in a thread of the test process, on
127.0.0.1. The traffic log mixes rows that stream (TTFT 60 ms, 5 tokens 10 ms apart) with rows the
server answers 503, and carries the tag that says which, so every result row's status can be
checked against what its request asked for. Timing checks are lower bounds only: the server sends
the first token no earlier than 60 ms after the request reached it.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shadowreplay.cli import main
from shadowreplay.loadgen.locust.request_mix import RequestMix, SynthesizedLengths
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA
from tests.support.faulty_server import FaultyServerThread

pytestmark = pytest.mark.timeout(180)

TTFT_MS = 60
ITL_MS = 10
TOKENS = 5
CANARY_KEY = "sk-canary-locust-run-7c41"
LOCUST_BOUND_S = 90


def write_log(path: Path) -> Path:
    """Three streaming rows (tag ok) and one row the server refuses with 503 (tag fail), which
    also echoes the request's Authorization header into its error message (a careless server)."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    stream = {"max_tokens": TOKENS, "faulty": {"ttft_ms": TTFT_MS, "itl_ms": ITL_MS}}
    refuse = {"faulty": {"status": 503, "echo_headers_in_error": True}}
    rows = [
        {
            "request_id": request_id,
            "arrival_time": start + timedelta(seconds=i),
            "api": "chat",
            "messages": json.dumps([{"role": "user", "content": f"question {i}"}]),
            "params": json.dumps(params),
            "tag": tag,
        }
        for i, (request_id, params, tag) in enumerate(
            [("s0", stream, "ok"), ("s1", stream, "ok"), ("s2", stream, "ok"), ("r0", refuse, "fail")]
        )
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=TRAFFIC_LOG_SCHEMA), path)
    return path


def write_target(path: Path, base_url: str) -> Path:
    path.write_text(
        f"name: faulty\nkind: openai\nbase_url: {base_url}\nmodel: faulty-model\napi_key_env: LOCUST_TEST_KEY\n"
    )
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LOCUST_TEST_KEY": CANARY_KEY}
    return subprocess.run(
        [sys.executable, "-m", "shadowreplay.cli", *args],
        capture_output=True,
        text=True,
        timeout=LOCUST_BOUND_S,
        env=env,
    )


def locust_stats(prefix: Path) -> dict[str, dict]:
    with open(f"{prefix}_stats.csv", newline="") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def server():
    with FaultyServerThread() as running:
        yield running


@pytest.fixture(scope="module")
def headless_run(server, tmp_path_factory):
    """One headless run: 4 users for 4 s, one Locust process, Locust's CSV statistics."""
    work = tmp_path_factory.mktemp("locust")
    run_dir = work / "run"
    completed = run_cli(
        "locust",
        "--target",
        str(write_target(work / "target.yaml", server.base_url)),
        "--log",
        str(write_log(work / "log.parquet")),
        "-o",
        str(run_dir),
        "--headless",
        "-u",
        "4",
        "-r",
        "4",
        "-t",
        "4s",
        "--csv",
        str(work / "locust"),
    )
    return completed, run_dir, work / "locust"


def test_locust_exits_with_its_own_status(headless_run):
    completed, run_dir, _ = headless_run
    assert completed.returncode == 1, completed.stderr[-3000:]  # Locust: some requests failed (the 503 rows)
    assert "--run-time limit reached" in completed.stderr
    assert f"shadowreplay report {run_dir}" in completed.stderr


def test_locust_statistics_hold_ttft_itl_and_e2e_with_our_statuses(headless_run):
    _, _, csv_prefix = headless_run
    stats = locust_stats(csv_prefix)
    ttft, itl, e2e = stats["ttft"], stats["itl"], stats["e2e"]
    assert {ttft["Type"], itl["Type"], e2e["Type"]} == {"SSE"}
    assert int(ttft["Request Count"]) > 0 and int(ttft["Failure Count"]) == 0
    assert float(ttft["Min Response Time"]) >= TTFT_MS
    assert float(ttft["Median Response Time"]) >= TTFT_MS
    assert int(itl["Request Count"]) > 0
    assert float(e2e["Min Response Time"]) >= 0 and int(e2e["Failure Count"]) > 0
    with open(f"{csv_prefix}_failures.csv", newline="") as handle:
        failures = list(csv.DictReader(handle))
    assert [(f["Name"], f["Error"]) for f in failures] == [("e2e", "StreamFailure('http_error (HTTP 503)')")]


def test_one_result_row_per_request_with_the_right_status(headless_run):
    _, run_dir, _ = headless_run
    rows = pl.read_parquet(run_dir / "results" / "*.parquet")
    assert rows.height > 10
    assert rows["request_id"].n_unique() == rows.height, "one row per request"
    assert rows["run_id"].n_unique() == 1 and rows["final"].all() and (rows["attempt"] == 1).all()
    assert set(rows["target"]) == {"faulty"}
    assert set(rows["status"]) <= {"ok", "http_error", "cancelled"}
    streamed, refused = rows.filter(pl.col("tag") == "ok"), rows.filter(pl.col("tag") == "fail")
    assert set(streamed["status"]) <= {"ok", "cancelled"} and (streamed["status"] == "ok").sum() > 0
    assert set(refused["status"]) <= {"http_error", "cancelled"} and (refused["status"] == "http_error").sum() > 0
    ok = rows.filter(pl.col("status") == "ok")
    assert (ok["completion_tokens"] == TOKENS).all() and (ok["http_status"] == 200).all()
    assert (ok["token_times_ms"].list.len() == TOKENS).all()
    assert ok["ttft_ms"].min() >= TTFT_MS and (ok["e2e_ms"] >= ok["ttft_ms"]).all()
    assert (ok["sent_s"] >= ok["scheduled_s"]).all() and (ok["lateness_ms"] >= 0).all()
    failed = rows.filter(pl.col("status") == "http_error")
    assert (failed["http_status"] == 503).all()
    assert failed["error"].str.contains("Bearer [redacted]", literal=True).all(), "the echoed key is scrubbed"


def test_manifest_and_locust_totals_agree_with_the_rows(headless_run):
    _, run_dir, _ = headless_run
    rows = pl.read_parquet(run_dir / "results" / "*.parquet")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["run_id"] == rows["run_id"][0]
    assert manifest["load_generator"]["tool"] == "locust" and manifest["load_generator"]["users"] == 4
    assert manifest["targets"][0]["api_key_env"] == "LOCUST_TEST_KEY"
    totals = manifest["locust_stats"]  # Locust's own counts when it quit (its CSV may lag by a second)
    ok = int((rows["status"] == "ok").sum())
    failed = int((rows["status"] == "http_error").sum())
    assert totals["ttft"] == {**totals["ttft"], "requests": ok, "failures": 0}
    assert totals["itl"]["requests"] == ok * (TOKENS - 1)
    assert totals["e2e"] == {**totals["e2e"], "requests": ok + failed, "failures": failed}


def test_no_secret_in_run_directory_or_output(headless_run):
    completed, run_dir, csv_prefix = headless_run
    assert CANARY_KEY not in completed.stdout + completed.stderr
    files = [*run_dir.rglob("*"), *csv_prefix.parent.glob(f"{csv_prefix.name}*")]
    for path in (p for p in files if p.is_file()):
        assert CANARY_KEY.encode() not in path.read_bytes(), path


def test_report_summarizes_a_locust_run(headless_run):
    _, run_dir, _ = headless_run
    rows = pl.read_parquet(run_dir / "results" / "*.parquet")
    completed = run_cli("report", str(run_dir), "--json", "--prices", "none")
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout)
    stats = summary["targets"]["faulty"]["all"]
    assert stats["requests"] == rows.height
    assert stats["ok"] == (rows["status"] == "ok").sum()
    assert stats["errors_by_status"]["http_error"] == (rows["status"] == "http_error").sum()
    assert stats["latency_ms"]["ttft"]["p50"] >= TTFT_MS
    assert (run_dir / "report.html").is_file()


def test_processes_run_master_and_workers_into_one_run(server, tmp_path):
    """--processes 2: Locust's own master and two workers; one run id, one shard series per worker."""
    run_dir = tmp_path / "run"
    completed = run_cli(
        "locust",
        "--target",
        str(write_target(tmp_path / "target.yaml", server.base_url)),
        "--log",
        str(write_log(tmp_path / "log.parquet")),
        "-o",
        str(run_dir),
        "--headless",
        "-u",
        "2",
        "-r",
        "2",
        "-t",
        "3s",
        "--processes",
        "2",
        "--",
        "--exit-code-on-error",
        "0",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = pl.read_parquet(run_dir / "results" / "*.parquet")
    assert rows["run_id"].n_unique() == 1 and rows["worker"].n_unique() == 2
    assert rows["request_id"].n_unique() == rows.height
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["run_id"] == rows["run_id"][0] and manifest["load_generator"]["processes"] == 2
    # Every process shares the run's time axis: the master's first test start.
    assert 0 <= rows["scheduled_s"].min() < 3.0


# -- the request mix, and mistakes caught before Locust starts ----------------------------------------
def test_mix_draws_log_rows_with_fresh_ids_and_the_given_schedule(tmp_path):
    mix = RequestMix.from_log(write_log(tmp_path / "log.parquet"))
    assert not mix.needs_tokenizer
    rng = random.Random(1)
    drawn = [mix.draw(rng, f"w-{i}", scheduled_s=float(i)) for i in range(40)]
    assert {row["request_id"].split("-", 2)[2] for row in drawn} == {"s0", "s1", "s2", "r0"}
    assert all(row["request_id"].startswith(f"w-{i}-") and row["scheduled_s"] == i for i, row in enumerate(drawn))
    assert all(row["session_id"] is None and row["clamped"] is False for row in drawn)
    assert "response_text" not in drawn[0]


def test_mix_of_synthesized_lengths_needs_a_tokenizer():
    mix = RequestMix.synthesized(SynthesizedLengths(32, 8))
    row = mix.draw(random.Random(0), "w-1", scheduled_s=0.5)
    assert mix.needs_tokenizer
    assert (row["request_id"], row["expected_prompt_tokens"], row["expected_completion_tokens"]) == ("w-1", 32, 8)
    with pytest.raises(ValueError, match="at least 1 token"):
        SynthesizedLengths(0, 8)


def test_verb_refuses_synthesized_prompts_without_a_tokenizer(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOCUST_TEST_KEY", CANARY_KEY)
    target = write_target(tmp_path / "target.yaml", "http://127.0.0.1:9/v1")
    assert main(["locust", "--target", str(target), "-o", str(tmp_path / "run"), "--headless"]) == 2
    assert "need the target's `tokenizer`" in capsys.readouterr().err


def test_verb_refuses_a_run_directory_with_results(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOCUST_TEST_KEY", CANARY_KEY)
    target = write_target(tmp_path / "target.yaml", "http://127.0.0.1:9/v1")
    (tmp_path / "run" / "results").mkdir(parents=True)
    (tmp_path / "run" / "results" / "part-x-00000.parquet").write_bytes(b"")
    code = main(
        [
            "locust",
            "--target",
            str(target),
            "--log",
            str(write_log(tmp_path / "log.parquet")),
            "-o",
            str(tmp_path / "run"),
            "--headless",
        ]
    )
    assert code == 2 and "already holds results" in capsys.readouterr().err


def test_verb_names_a_missing_key_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LOCUST_TEST_KEY", raising=False)
    target = write_target(tmp_path / "target.yaml", "http://127.0.0.1:9/v1")
    code = main(
        [
            "locust",
            "--target",
            str(target),
            "--log",
            str(write_log(tmp_path / "log.parquet")),
            "-o",
            str(tmp_path / "run"),
            "--headless",
        ]
    )
    assert code == 2 and "LOCUST_TEST_KEY, which is not set" in capsys.readouterr().err
