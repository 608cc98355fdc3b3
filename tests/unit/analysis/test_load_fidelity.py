"""The checks that say the load was not offered as recorded, on constructed result rows."""

from __future__ import annotations

import json

from shadowreplay.analysis.data.run_data import load_run
from shadowreplay.analysis.summary.load_fidelity import load_warnings
from shadowreplay.analysis.summary.run_summary import summarize
from shadowreplay.cli import main
from tests.support.results_factory import result_row, write_results


def _run(tmp_path, lateness_ms: float, gaps_ms=(5.0, 5.0)):
    rows = [
        result_row(f"r{i}", scheduled_s=i * 0.1, lateness_ms=lateness_ms if i % 10 == 9 else 1.0, gaps_ms=gaps_ms)
        for i in range(100)
    ]
    write_results(tmp_path, rows, manifest={"run_id": "run-factory"})
    return tmp_path


def test_no_warning_when_the_client_kept_its_schedule(tmp_path):
    summary = summarize(load_run(_run(tmp_path, lateness_ms=9.0)))
    assert summary.targets["target-a"].all.latency_ms["lateness"].p99 is not None
    assert summary.load_warnings == []


def test_lateness_p99_above_ten_ms_is_a_warning_naming_the_figure(tmp_path):
    summary = summarize(load_run(_run(tmp_path, lateness_ms=40.0)))
    (warning,) = summary.load_warnings
    p99 = summary.targets["target-a"].all.latency_ms["lateness"].p99
    assert warning.check == "send_lateness" and warning.target == "target-a"
    assert warning.value == p99 and p99 > 10.0 and warning.limit == 10.0
    assert "send lateness p99" in warning.message and "not offered as recorded" in warning.message


def _histograms(itl_mean_ms: float) -> dict:
    itl = {"status": "compared", "mean_ms": {"vllm": itl_mean_ms, "ours": 0.0}}
    return {"status": "compared", "targets": {"target-a": {"metrics": {"itl": itl}}}}


def test_mostly_zero_gaps_warn_only_where_the_server_says_its_gaps_were_not(tmp_path):
    run = load_run(_run(tmp_path, lateness_ms=1.0, gaps_ms=(0.0, 0.0, 0.0, 6.0)))
    summary = summarize(run)
    reads = summary.targets["target-a"].all.multi_token_reads
    assert (reads.zero_gaps, reads.gaps, reads.share) == (300, 400, 0.75)  # 100 rows of gaps 0, 0, 0, 6 ms
    assert summary.load_warnings == []  # no server histogram: chunks of several tokens may be the API's way
    (warning,) = load_warnings(summary.targets, _histograms(itl_mean_ms=5.1))
    assert warning.check == "zero_gap_reads" and warning.value == 0.75 and "75%" in warning.message
    assert load_warnings(summary.targets, _histograms(itl_mean_ms=0.5)) == []


def test_report_prints_the_warning_last_and_keeps_it_in_the_summary(tmp_path, capsys):
    run_dir = _run(tmp_path, lateness_ms=40.0)
    assert main(["report", str(run_dir), "--prices", "none"]) == 0
    flat = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "WARNING target-a: send lateness p99" in flat and "fell behind its schedule" in flat
    assert flat.endswith("or replay at a lower --speed")  # last, after every table
    saved = json.loads((run_dir / "summary.json").read_text())
    assert [w["check"] for w in saved["load_warnings"]] == ["send_lateness"]


def test_the_lateness_limit_is_the_users_to_set(tmp_path, capsys):
    run_dir = _run(tmp_path, lateness_ms=40.0)
    assert main(["report", str(run_dir), "--prices", "none", "--json", "--max-lateness-ms", "50"]) == 0
    assert json.loads(capsys.readouterr().out)["load_warnings"] == []
    assert main(["report", str(run_dir), "--prices", "none", "--max-lateness-ms", "0"]) == 2
    assert "--max-lateness-ms must be positive" in capsys.readouterr().err
