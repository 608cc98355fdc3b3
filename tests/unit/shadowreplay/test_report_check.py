"""`shadowreplay report RUN_DIR --slo ... --check` for CI (analysis/summary/slo_check.py): exit 0 when
every SLO is met on every target, 1 when one is missed (or cannot be measured), 2 without an SLO."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from shadowreplay.cli import main
from tests.support.results_factory import result_row, write_results

LONG_NAME = "candidate-qwen3-32b-h100"


@pytest.fixture
def run_dir(tmp_path):
    rows = []
    for i in range(20):
        rows.append(result_row(f"r{i}", target="baseline", scheduled_s=i * 0.5, ttft_ms=10.0 + i, gaps_ms=[4.0] * 3))
        rows.append(
            result_row(f"r{i}", target=LONG_NAME, scheduled_s=i * 0.5, ttft_ms=100.0 + 10 * i, gaps_ms=[20.0] * 3)
        )
        rows.append(
            result_row(f"r{i}", target="broken", scheduled_s=i * 0.5, ttft_ms=None, status="timeout", http_status=None)
        )
    write_results(tmp_path, rows, shards=1, manifest={"run_id": "check"})
    return tmp_path


def check_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if re.match(r"^(MET|MISSED|NO DATA|check )", line)]


def test_a_missed_slo_exits_1_and_says_which_by_how_much_per_target(run_dir, capsys):
    code = main(["report", str(run_dir), "--slo", "ttft_p95=250ms,tpot_p90=10ms", "--check", "--prices", "none"])
    out = capsys.readouterr().out
    assert code == 1
    lines = check_lines(out)
    ttft_p95 = np.percentile([100.0 + 10 * i for i in range(20)], 95)  # 280.5 ms
    assert (
        f"MISSED  ttft_p95=250ms on {LONG_NAME}: {ttft_p95:.1f} ms, {ttft_p95 - 250:.1f} ms over the threshold (+12.2%)"
        in lines
    )
    assert f"MISSED  tpot_p90=10ms on {LONG_NAME}: 20.0 ms, 10.0 ms over the threshold (+100.0%)" in lines
    baseline_p95 = np.percentile([10.0 + i for i in range(20)], 95)
    headroom = 250 - baseline_p95
    assert (
        f"MET     ttft_p95=250ms on baseline: {baseline_p95:.1f} ms, {headroom:.1f} ms under the threshold (-88.8%)"
        in lines
    )
    # a target without one ok request cannot be measured: it counts as missed
    assert "NO DATA ttft_p95=250ms on broken: no final ok request to measure it (counts as missed)" in lines
    assert lines[-1] == f"check FAILED: 4 of 6 SLO verdicts missed, on 2 of 3 target(s) (broken, {LONG_NAME}); exit 1"
    summary = json.loads((run_dir / "summary.json").read_text())  # the report is still written
    result = summary["targets"][LONG_NAME]["all"]["slo"][0]
    assert result["over_ms"] == pytest.approx(ttft_p95 - 250) and result["met"] is False
    assert summary["targets"]["broken"]["all"]["slo"][0]["over_ms"] is None


def test_a_target_without_data_fails_the_check_when_the_others_pass(run_dir, capsys):
    code = main(["report", str(run_dir), "--slo", "ttft_p95=2s", "--check", "--prices", "none"])
    lines = check_lines(capsys.readouterr().out)
    assert code == 1 and lines[-1].startswith("check FAILED: 1 of 3")  # broken has no data


def test_all_met_on_measured_targets_exits_0(tmp_path, capsys):
    rows = [result_row(f"r{i}", target=LONG_NAME, scheduled_s=i * 0.5, ttft_ms=100.0 + i) for i in range(10)]
    write_results(tmp_path, rows, shards=1, manifest={"run_id": "ok"})
    assert main(["report", str(tmp_path), "--slo", "ttft_p95=2s", "--check", "--prices", "none"]) == 0
    lines = check_lines(capsys.readouterr().out)
    assert lines[0].startswith(f"MET     ttft_p95=2000ms on {LONG_NAME}: ")
    assert lines[-1] == "check passed: all 1 SLO verdicts met on 1 target(s); exit 0"


def test_without_check_a_missed_slo_still_exits_0(run_dir, capsys):
    assert main(["report", str(run_dir), "--slo", "ttft_p95=250ms", "--prices", "none"]) == 0
    assert check_lines(capsys.readouterr().out) == []


def test_with_json_the_check_goes_to_stderr_and_stdout_stays_json(run_dir, capsys):
    code = main(["report", str(run_dir), "--slo", "ttft_p95=250ms", "--check", "--json", "--prices", "none"])
    captured = capsys.readouterr()
    assert code == 1
    assert json.loads(captured.out)["slos"] == ["ttft_p95=250ms"]
    assert check_lines(captured.err)[-1].startswith("check FAILED: 2 of 3")


def test_check_without_an_slo_is_a_usage_error(run_dir, capsys):
    assert main(["report", str(run_dir), "--check"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "--check needs at least one --slo" in captured.err and "Traceback" not in captured.err
    assert not (run_dir / "summary.json").exists()  # refused before reading the run


def test_help_explains_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for fragment in ("--check", "exit 0 when every SLO is met", "1 when any is missed", "exit 2"):
        assert fragment in text, fragment
