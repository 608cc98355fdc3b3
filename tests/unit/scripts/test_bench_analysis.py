"""scripts/bench_analysis.py at a tiny scale: the report and DuckDB agree on every figure it compares."""

from __future__ import annotations

import sys

from tests.support.paths import SCRIPTS

sys.path.insert(0, str(SCRIPTS))

from bench_analysis import COMPARED_METRICS, compare, make_run_dir  # noqa: E402


def test_the_report_and_duckdb_agree_on_a_small_run(tmp_path):
    run_dir = tmp_path / "run"
    files = make_run_dir(run_dir, rows=2000, targets=2, tokens=5)
    result = compare(run_dir, files, repeats=1)
    assert result["disagreements"] == []
    assert sorted(result["ours"]) == ["target-a", "target-b"]
    for row in result["ours"].values():
        assert row["requests"] == 1000 and 0 < row["errors"] < 100
        assert row["itl_count"] == row["ok"] * 4, "4 gaps for 5 token times"
        assert all(row[f"{metric}_p99"] is not None for metric in COMPARED_METRICS)
    assert result["ours_peak_mib"] > 0 and result["duckdb_peak_mib"] > 0 and len(result["rounds"]) == 1
