"""RUN_DIR/report.html: written by `report`, self-contained, and rendered by headless Chromium with its charts.

Chromium is Debian's `chromium` package (scripts/setup.sh installs it); the page is opened from a
file:// URL with every host unresolvable, so a chart that needed the network would not draw.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest

from shadowreplay.analysis.report.charts import Panel, Series, Threshold, line_chart
from shadowreplay.analysis.report.page import Figure, ReportPage
from shadowreplay.analysis.report.run_page import time_bin_s
from shadowreplay.cli import main
from shadowreplay.replay.schemas.run_dir import REPORT_NAME
from tests.support.chromium import chromium_dom, plotly_drawing
from tests.support.results_factory import result_row, write_results
from tests.support.telemetry_factory import gpu_samples, server_samples, write_telemetry

MANIFEST = {
    "run_id": "run-html",
    "status": "completed",  # a finished run (one without says so first: replay/schemas/run_completeness.py)
    "targets": [
        {"name": "local", "kind": "vllm", "model": "tiny"},
        {"name": "hosted", "kind": "openai", "model": "gpt-4o-mini", "base_url": "https://api.openai.com/v1"},
    ],
}
OVER_TIME_TITLES = ("Request rate (per 1 s bin)", "TTFT by send time: p95 (solid), p50 (dotted)")
TELEMETRY_TITLES = (
    "GPU utilisation (NVML)",
    "GPU power (NVML)",
    "KV-cache usage (vLLM /metrics)",
    "Requests in the server (vLLM /metrics)",
)
DISTRIBUTION_TITLES = ("TTFT", "ITL", "TPOT", "e2e")
ODD_TAG = "<b>tag & co</b>"


@pytest.fixture
def run_dir(tmp_path) -> Path:
    rng = np.random.default_rng(3)
    rows = []
    for i in range(120):
        s = i * 0.25
        rows.append(
            result_row(
                f"r{i}",
                target="local",
                scheduled_s=s,
                ttft_ms=float(rng.uniform(10, 40)),
                gaps_ms=rng.uniform(2, 6, i % 7 + 1).tolist(),
                tag=ODD_TAG if i % 2 else "chat",
            )
        )
        failed = i % 29 == 4
        rows.append(
            result_row(
                f"r{i}",
                target="hosted",
                scheduled_s=s,
                ttft_ms=None if failed else float(rng.uniform(200, 500)),
                gaps_ms=rng.uniform(10, 20, 12).tolist(),
                status="timeout" if failed else "ok",
                tag=ODD_TAG if i % 2 else "chat",
            )
        )
    directory = tmp_path / "run"
    write_results(directory, rows, manifest=MANIFEST)
    return directory


def _add_telemetry(run_dir: Path) -> None:
    t = np.arange(0.0, 31.0, 0.1)
    util = 50 + 40 * np.sin(t / 5)
    write_telemetry(run_dir, gpu_samples(t, util, 150 + 3 * util, 40e9 + 1e8 * t), name="nvml.parquet")
    seconds = np.arange(0.0, 31.0)
    write_telemetry(
        run_dir,
        server_samples("local", seconds, 0.3 + 0.2 * np.sin(seconds / 5), 4 + seconds % 5, seconds % 3),
        name="vllm.parquet",
    )


def test_time_bins_are_nice_steps_with_at_most_60_bins():
    assert [time_bin_s(span) for span in (0.0, 5.0, 30.0, 60.0, 61.0, 3600.0, 1e7)] == [0.1, 0.1, 0.5, 1, 2, 60, 3600]


def test_report_html_renders_offline_with_every_chart(run_dir, tmp_path, capsys):
    _add_telemetry(run_dir)
    assert main(["report", str(run_dir), "--prices", "none", "--slo", "ttft_p95=300ms"]) == 0
    page = run_dir / REPORT_NAME
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"<(script|img|iframe)[^>]*\ssrc=|<link\b", text), "the page must not load any resource"
    assert text.count("<script") == 1 + 2  # plotly.js once, then one call per figure
    assert html.escape(ODD_TAG) in text and ODD_TAG not in text.split("<script")[0]

    dom, seconds = chromium_dom(page, tmp_path / "profile")
    rendered = plotly_drawing(dom)
    assert set(rendered.figure_classes) == {"fig-0-0", "fig-1-0"}
    assert all("js-plotly-plot" in classes for classes in rendered.figure_classes.values()), rendered.figure_classes
    for title in (*OVER_TIME_TITLES, *TELEMETRY_TITLES, *DISTRIBUTION_TITLES, "steady window"):
        assert title in rendered.svg_texts, title
    # offered + 2 targets + hosted errors; TTFT p95 + p50 x 2; GPU util, power; KV; running + waiting; 4 x 2 curves
    assert rendered.traces == 4 + 4 + 2 + 1 + 2 + 8
    for heading in ("Requests and throughput (steady window)", "GPU utilisation and energy", "Latency (ms): local"):
        assert f"<h3>{heading}</h3>" in dom
    print(f"report.html: {page.stat().st_size / 1e6:.2f} MB, rendered in {seconds:.1f} s")


def test_without_telemetry_the_page_says_so_and_still_draws(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir), "--json", "--prices", "none"]) == 0
    dom, _ = chromium_dom(run_dir / REPORT_NAME, tmp_path / "profile")
    rendered = plotly_drawing(dom)
    assert all("js-plotly-plot" in classes for classes in rendered.figure_classes.values())
    assert set(OVER_TIME_TITLES) <= rendered.svg_texts
    assert not set(TELEMETRY_TITLES) & rendered.svg_texts
    assert "No telemetry in this run" in dom and "GPU telemetry: the run has no telemetry files" in dom


def test_the_page_builder_draws_a_sweep_curve_with_its_slo_line(tmp_path):
    """The pieces a sweep report reuses: ReportPage, line_chart and a Threshold (checked without a browser)."""
    curve = Panel(
        "TTFT p95 vs offered rate",
        "ms",
        [Series("candidate", [1, 2, 4], [100, 200, 900])],
        [Threshold(500.0, "SLO ttft_p95=500ms")],
    )
    figure = line_chart(curve, "offered requests/s")
    assert [(shape["y0"], shape["y1"]) for shape in figure.layout["shapes"]] == [(500.0, 500.0)]
    page = ReportPage("sweep <demo>")
    page.section("Curve").add(Figure("TTFT p95 against offered rate", figure))
    text = page.write(tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<title>sweep &lt;demo&gt;</title>" in text and 'id="fig-0-0"' in text and "SLO ttft_p95=500ms" in text
