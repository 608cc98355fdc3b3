"""The judgement from a run directory alone (analysis/shadow/judge_run.py) over result shards with known answers:
the paired measures are the rows' (each side's answers scored shard by shard, a shard without one side's rows
included), `--baseline production` pairs the log's own answers, and gates.json and both summaries are written."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl
import pyarrow as pa
import pytest

from shadowreplay.analysis.shadow.gates_file import GatesFile
from shadowreplay.analysis.shadow.judge_run import judge_run
from shadowreplay.analysis.shadow.paired_requests import Sides
from shadowreplay.replay.schemas.shadow_requests import shadow_requests, write_shadow_requests
from tests.support.results_factory import result_row, write_results

GATES = GatesFile.model_validate(
    {
        "window": "10s",
        "gates": [
            {"name": "ttft", "metric": "ttft_p95_ms", "max": 500},
            {"name": "accuracy", "metric": "accuracy", "scorer": "numeric", "max_drop": 0.02},
            {"name": "json", "metric": "json_valid_rate", "max_drop": 0.5},
        ],
    }
)


def _row(i: int, target: str, text: str | None, ttft_ms: float = 40.0, status: str = "ok") -> dict:
    row = result_row(f"r{i:03d}", target=target, scheduled_s=i * 0.5, ttft_ms=ttft_ms, status=status)
    row["output_text"] = text
    return row


def _requests(run_dir, n: int) -> None:
    start = datetime(2024, 5, 1, 9, tzinfo=UTC)
    rows = pa.table(
        {
            "request_id": [f"r{i:03d}" for i in range(n)],
            "arrival_time": pa.array([start + timedelta(seconds=i) for i in range(n)], pa.timestamp("us", tz="UTC")),
            "tag": ["a" if i % 2 else "b" for i in range(n)],
            "reference": [str(i) for i in range(n)],
            "response_text": [f"It is {i}." for i in range(n)],
            "params": ['{"response_format": {"type": "json_object"}}' if i % 4 == 0 else None for i in range(n)],
        }
    )
    write_shadow_requests(shadow_requests(rows), run_dir / "requests.parquet")


def test_the_judgement_is_the_rows_own(tmp_path):
    n = 40
    run_dir = tmp_path / "run"
    rows = []
    for i in range(n):
        rows.append(_row(i, "base", f"The answer is {i}." if i % 4 else f'{{"answer": {i}}}'))
        wrong = i % 5 == 0
        rows.append(_row(i, "cand", f"The answer is {i + (1 if wrong else 0)}.", ttft_ms=40.0 + i))
    rows.append(_row(n, "base", "The answer is 40."))  # the candidate never answered this one: not paired
    write_results(run_dir, rows, shards=3)
    _requests(run_dir, n + 1)
    judgement = judge_run(run_dir, Sides("base", "cand"), GATES, tmp_path / "out", prices=None)
    pairs = judgement.pairs
    assert pairs.height == n and pairs["request_id"].is_unique().all()
    assert pairs["b_correct_0"].sum() == n and pairs["c_correct_0"].sum() == n - n // 5
    assert pairs.filter(pl.col("json_expected")).height == n // 4  # asked for JSON (and the baseline answered it)
    assert pairs["b_answered_json"].sum() == n // 4 and pairs["c_json_valid"].sum() == 0
    report = json.loads((tmp_path / "out" / "gates.json").read_text())
    by_name = {gate["name"]: gate for gate in report["gates"]}
    assert by_name["accuracy"]["candidate"]["rate"] == pytest.approx(1 - 1 / 5)
    assert by_name["json"]["candidate"]["rate"] == 0.0 and by_name["json"]["baseline"]["rate"] == 1.0
    assert by_name["ttft"]["candidate"]["p95"] == pytest.approx(
        pl.Series([40.0 + i for i in range(n)]).quantile(0.95, "linear")
    )
    assert (tmp_path / "out" / "summary.md").read_text().startswith("# Shadow: cand against base")
    windows = pl.read_parquet(tmp_path / "out" / "windows.parquet")
    assert windows.filter(pl.col("grouping") == "hour_of_day")["group"].unique().to_list() == ["9"]

    production = judge_run(run_dir, Sides("production", "cand"), GATES, tmp_path / "prod", prices=None)
    assert production.pairs.height == n and production.pairs["b_correct_0"].sum() == n  # "It is i." is right
