"""The report page's percentile curves: kept by the summary from its one sort of each population, and the
same as numpy's percentiles of the population recomputed from the inputs; drawn from the rows alike."""

from __future__ import annotations

import numpy as np
import pytest

from shadowreplay.analysis.data.run_data import load_run
from shadowreplay.analysis.report.charts import ColourMap
from shadowreplay.analysis.report.run_page import (
    DISTRIBUTION_CURVES,
    DISTRIBUTION_METRICS,
    DISTRIBUTION_PERCENTILES,
    distribution_panels,
)
from shadowreplay.analysis.summary.run_summary import summarize
from tests.support.results_factory import result_row, write_results


def test_curves_are_the_populations_percentiles(tmp_path):
    rng = np.random.default_rng(3)
    rows, ttft, gaps = [], [], []
    for i in range(60):
        first = float(round(rng.uniform(10, 300), 3))
        between = [float(round(g, 3)) for g in rng.uniform(0, 20, 3)]
        rows.append(result_row(f"r{i}", scheduled_s=i * 0.1, ttft_ms=first, gaps_ms=between))
        ttft.append(first)
        gaps += between
    rows.append(result_row("failed", status="http_error", ttft_ms=None, http_status=500))
    write_results(tmp_path, rows)
    run = load_run(tmp_path)
    summary = summarize(run, curves=DISTRIBUTION_CURVES)
    kept = summary.distributions["target-a"]
    assert sorted(kept) == sorted(DISTRIBUTION_METRICS)
    assert kept["ttft"] == pytest.approx(np.percentile(ttft, DISTRIBUTION_PERCENTILES), rel=1e-12)
    assert kept["itl"] == pytest.approx(np.percentile(gaps, DISTRIBUTION_PERCENTILES), rel=1e-12, abs=1e-12)
    assert "distributions" not in summary.json_dict()
    from_summary = distribution_panels(run.final_scan, run.targets, ColourMap(), summary.distributions)
    from_rows = distribution_panels(run.final_scan, run.targets, ColourMap())
    for drawn, recomputed in zip(from_summary, from_rows, strict=True):
        (line,) = drawn.series
        (again,) = recomputed.series
        assert list(line.x) == pytest.approx(list(again.x), rel=1e-12, abs=1e-12)
        assert list(line.y) == list(DISTRIBUTION_PERCENTILES)
