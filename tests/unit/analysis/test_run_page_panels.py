"""The report page's over-time panels (analysis/report/run_page.py load_panels) against figures recomputed
from the rows' inputs: the offered line, completions per target, TTFT p50/p95 by send time."""

from __future__ import annotations

import numpy as np
import pytest

from shadowreplay.analysis.data.run_data import load_run
from shadowreplay.analysis.report.charts import ColourMap, Panel, Series
from shadowreplay.analysis.report.run_page import SEND_TIME_BINS, load_panels, time_bin_s
from shadowreplay.analysis.summary.run_summary import summarize
from tests.support.results_factory import result_row, write_results


def _series(panel: Panel, name: str) -> Series:
    return next(series for series in panel.series if series.name == name)


def test_offered_rate_draws_each_scheduled_request_once(tmp_path):
    """Two targets, one schedule: the offered line counts each request once; where one target lacks a final
    row (an interrupted run), the bin keeps the other target's count."""
    rows = [result_row(f"r{i}", target=t, scheduled_s=i * 0.25) for i in range(40) for t in ("a", "b")]
    rows = [row for row in rows if not (row["target"] == "b" and row["request_id"] in ("r5", "r6"))]
    write_results(tmp_path, rows)
    run = load_run(tmp_path)
    rate, _ = load_panels(run.final_scan, run.targets, 1.0, ColourMap())
    assert list(_series(rate, "offered (scheduled)").y)[:10] == [4.0] * 10  # 4 a second; r5, r6 once, from a
    assert sum(_series(rate, "a").y) == 40 and sum(_series(rate, "b").y) == 38


def test_ttft_by_send_time_is_each_bins_percentiles(tmp_path):
    rng = np.random.default_rng(3)
    ttft = rng.uniform(10, 500, 120).round(3)
    rows = [result_row(f"r{i}", scheduled_s=i * 0.1, lateness_ms=0.0, ttft_ms=float(v)) for i, v in enumerate(ttft)]
    rows.append(result_row("failed", scheduled_s=0.5, status="http_error", ttft_ms=None, http_status=500))
    write_results(tmp_path, rows)
    run = load_run(tmp_path)
    _, latency = load_panels(run.final_scan, run.targets, 2.0, ColourMap())
    p95, p50 = _series(latency, "target-a"), _series(latency, "target-a p50")
    bins = (np.arange(120) * 0.1 / 2.0).astype(int)
    for b in range(6):
        assert p95.y[b] == pytest.approx(np.percentile(ttft[bins == b], 95))
        assert p50.y[b] == pytest.approx(np.percentile(ttft[bins == b], 50))


def test_the_summarys_timeline_draws_the_same_ttft_lines_as_the_rows(tmp_path):
    """`report` asks summarize for TTFT by send time (SEND_TIME_BINS) from the rows it reads anyway; the page
    draws those, and they are the lines it computes from the rows itself."""
    rng = np.random.default_rng(5)
    rows = [
        result_row(f"r{i}", target=t, scheduled_s=i * 0.05, ttft_ms=float(rng.uniform(5, 900)), tag=("x", None)[i % 2])
        for i in range(400)
        for t in ("a", "b")
    ]
    write_results(tmp_path, rows, shards=3)
    run = load_run(tmp_path)
    summary = summarize(run, send_time_bins=SEND_TIME_BINS)
    assert summary.timeline is not None and "timeline" not in summary.json_dict()
    bin_s = summary.timeline.bin_s
    assert bin_s == time_bin_s(max(row["done_s"] for row in rows) - 0.0)
    kept = load_panels(run.final_scan, run.targets, bin_s, ColourMap(), summary.timeline)
    recomputed = load_panels(run.final_scan, run.targets, bin_s, ColourMap())
    for drawn, again in zip(kept[1].series, recomputed[1].series, strict=True):
        assert drawn.name == again.name and list(drawn.x) == list(again.x)
        assert list(drawn.y) == [None if y is None else pytest.approx(y, rel=1e-12) for y in again.y]
        assert any(y is not None for y in drawn.y)


def test_gpu_lines_are_named_by_uuid_and_a_lost_gpu_says_when(tmp_path):
    from shadowreplay.analysis.data.telemetry_data import load_telemetry
    from shadowreplay.analysis.report.run_page import telemetry_panels
    from tests.support.telemetry_factory import sample, write_telemetry

    write_results(tmp_path, [result_row("r0")])
    rows = []
    for gpu in ("0", "1"):
        uuid = f"GPU-{gpu}a2b3c4d-0000-1111-2222-333344445555"
        times = [0.0, 1.0, 2.0] if gpu == "0" else [0.0, 1.0]
        rows += [sample("gpu_util_pct", t, 50.0, device=gpu, gpu_uuid=uuid) for t in times]
    rows.append(sample("gpu_lost", 1.5, 1.0, device="1", gpu_uuid="GPU-1a2b3c4d-0000-1111-2222-333344445555"))
    write_telemetry(tmp_path, rows)
    (util,) = telemetry_panels(load_telemetry(tmp_path), 1.0, ColourMap())
    assert [s.name for s in util.series] == ["GPU 0 GPU-0a2b3c4d", "GPU 1 GPU-1a2b3c4d (lost at 1.5 s)"]
