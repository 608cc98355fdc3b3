"""`shadowreplay report RUN_DIR`, end to end through the CLI: tables, --json, summary.json, user errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shadowreplay.cli import main
from tests.support.results_factory import result_row, write_results


@pytest.fixture
def run_dir(tmp_path):
    rows = []
    for i in range(20):
        tag = "chat" if i % 2 else "code"
        rows.append(result_row(f"r{i}", target="vllm-tiny", scheduled_s=i * 0.5, tag=tag, ttft_ms=10.0 + i,
                               gaps_ms=[4.0] * (i % 5)))  # fmt: skip
        status = "timeout" if i == 7 else "ok"
        rows.append(result_row(f"r{i}", target="hosted-api", scheduled_s=i * 0.5, tag=tag,
                               ttft_ms=None if status != "ok" else 100.0 + 10 * i, gaps_ms=[20.0] * 3,
                               status=status, http_status=None))  # fmt: skip
    rows.append(result_row("r3", target="hosted-api", scheduled_s=1.5, tag="chat", attempt=0, final=False,
                           status="http_error", http_status=429, ttft_ms=None))  # fmt: skip
    write_results(tmp_path, rows, shards=2, manifest={"run_id": "run-factory"})
    return tmp_path


def test_json_output_is_the_summary_file_and_recomputable(run_dir, capsys):
    code = main(["report", str(run_dir), "--slo", "ttft_p95=250ms,tpot_p90=10ms", "--json"])
    captured = capsys.readouterr()
    assert code == 0
    printed = json.loads(captured.out)
    assert printed == json.loads((run_dir / "summary.json").read_text())
    assert printed["slos"] == ["ttft_p95=250ms", "tpot_p90=10ms"]
    assert printed["source"]["rows"] == 41 and printed["source"]["final_rows"] == 40

    hosted = printed["targets"]["hosted-api"]["all"]
    assert hosted["requests"] == 20 and hosted["errors_by_status"]["timeout"] == 1
    assert hosted["attempts"] == 21 and hosted["retries"] == 1
    ttfts = [100.0 + 10 * i for i in range(20) if i != 7]
    assert hosted["latency_ms"]["ttft"]["p90"] == pytest.approx(np.percentile(ttfts, 90))
    assert hosted["latency_ms"]["tpot"]["p50"] == pytest.approx(20.0)
    # TTFT p95 of hosted-api is 100 + 10 * ~18 > 250 ms: missed; TPOT 20 ms > 10 ms: missed
    assert [r["met"] for r in hosted["slo"]] == [False, False] and hosted["slos_met"] is False
    tiny = printed["targets"]["vllm-tiny"]
    assert [t["tag"] for t in tiny["tags"]] == ["chat", "code"]
    assert tiny["all"]["slos_met"] is True
    chat_ttfts = [10.0 + i for i in range(20) if i % 2]
    assert tiny["tags"][0]["latency_ms"]["ttft"]["p50"] == pytest.approx(np.median(chat_ttfts))

    window = printed["window"]
    done = [r for r in range(20) if window["start_s"] <= r * 0.5 + 0.001 + (10.0 + r + 4.0 * (r % 5) + 0.5) / 1000
            <= window["end_s"]]  # fmt: skip
    assert tiny["all"]["window"]["completed"] == len(done)
    assert tiny["all"]["throughput"]["requests_per_s"] == pytest.approx(len(done) / window["duration_s"])


def test_tables_for_people(run_dir, capsys):
    assert main(["report", str(run_dir), "--slo", "ttft_p95=250ms", "--steady-warmup", "1"]) == 0
    out = capsys.readouterr().out
    for text in ("Requests and throughput", "Latency (ms): vllm-tiny", "Latency (ms): hosted-api", "TTFT from schedule",
                 "ttft_p95=250ms", "timeout", "chat", "code", "window 1.00-9.50 s"):  # fmt: skip
        assert text in out, text
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["window"]["warmup_s"] == 1.0


@pytest.mark.parametrize(
    ("argv_tail", "fragment"),
    [
        (["--slo", "ttft=fast"], "cannot read SLO 'ttft=fast'"),
        (["--steady-warmup", "60"], "leaves no steady window"),
    ],
)
def test_bad_options_are_one_line(run_dir, capsys, argv_tail, fragment):
    assert main(["report", str(run_dir), *argv_tail]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and err.count("\n") == 1


def test_a_run_dir_without_results_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "no result shards" in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "summary.json").exists()


def test_help_is_complete(capsys):
    with pytest.raises(SystemExit) as info:
        main(["report", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for text in ("RUN_DIR", "--slo", "--json", "--steady-warmup", "10%", "sched_ttft"):
        assert text in out, text
