"""SWEEP_DIR/report.html: written by `shadowreplay sweep`, drawn from curve.parquet, rendered offline by Chromium.

The sweep runs for real (LoadSweep's ramp, saturation rule, bisection, manifests and summaries)
with the Ray runner replaced by a deterministic server model that writes each point's result rows:
one FIFO server completing SERVER_RPS requests/s, so throughput saturates and TTFT explodes past it
and requests that would wait longer than TIMEOUT_S time out. The page's figures are then checked
against curve.parquet, its table against the points' run directories, and its rendering in headless
Chromium with every host unresolvable (tests/integration/test_html_report.py's check).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import shadowreplay.loadgen.sweep as load_sweep
import shadowreplay.replay.run.runner as runner
from shadowreplay.analysis.report.charts import Chart
from shadowreplay.analysis.report.page import Figure, Text
from shadowreplay.analysis.report.sweep_page import build_sweep_page, write_sweep_report
from shadowreplay.analysis.summary.models import SweepSummary
from shadowreplay.analysis.summary.tables import SummaryTable
from shadowreplay.cli import main
from shadowreplay.replay.schemas.run_dir import REPORT_NAME as SWEEP_REPORT_NAME
from tests.support.chromium import chromium_dom, plotly_drawing
from tests.support.faulty_server import FaultyServer
from tests.support.fifo_model import FifoServerModel
from tests.support.paths import REPO
from tests.support.server_thread import ServerThread

BUNDLED = REPO / "shadowreplay" / "embedded" / "data" / "azure_conv_first5min.csv"
SERVER_RPS = 6.0  # the modelled server completes one request every 1 / SERVER_RPS s
FIRST_TOKEN_MS = 15.0
OUTPUT_TOKENS = 8
TIMEOUT_S = 3.0  # a request that would wait longer than this in the queue times out
SLO = "ttft_p95=300ms"
LOAD_PANEL_TITLES = (
    "Achieved requests/s",
    "Output tokens/s",
    "TTFT p95 (solid), p50 (dotted)",
    "TPOT p95",
    "e2e p95",
    "Error rate",
)


MODELLED = FifoServerModel(SERVER_RPS, FIRST_TOKEN_MS, OUTPUT_TOKENS, TIMEOUT_S)


@pytest.fixture
def traffic_log(tmp_path) -> Path:
    log = tmp_path / "conv.parquet"
    assert main(["ingest", str(BUNDLED), "-o", str(log), "--format", "azure"]) == 0
    return log


@pytest.fixture
def swept(tmp_path, traffic_log, monkeypatch, capsys) -> tuple[Path, str]:
    """A Poisson sweep 1..32 req/s (6 points of 10 s, 2 bisection steps) through the verb."""
    monkeypatch.setattr(load_sweep, "run_plan", MODELLED.run_plan)
    monkeypatch.setattr(runner, "start_ray", lambda address, cpus=None: {})
    target = tmp_path / "target.yaml"
    sweep_dir = tmp_path / "sweep"
    argv = ["sweep", str(traffic_log), "--target", str(target), "--from", "1", "--to", "32", "--points", "6"]
    argv += ["--duration", "10s", "--slo", SLO, "--bisect-steps", "2", "-o", str(sweep_dir)]
    with ServerThread(FaultyServer()) as server:  # listens for the Session's endpoint check; the model serves
        target.write_text(f"name: modelled\nkind: openai\nbase_url: {server.base_url}\nmodel: m\napi: completions\n")
        code = main(argv)
    assert code == 0
    return sweep_dir, capsys.readouterr().out


def _figures(page) -> list[Figure]:
    return [block for section in page.sections for block in section.blocks if isinstance(block, Figure)]


def _trace(figure: Chart, name: str) -> dict:
    return figure.trace(name)


def test_sweep_writes_a_self_contained_report_that_renders_offline(swept, tmp_path):
    sweep_dir, printed = swept
    page_path = sweep_dir / SWEEP_REPORT_NAME
    assert f"report: {page_path}" in printed
    summary = json.loads((sweep_dir / "summary.json").read_text())
    curve = pl.read_parquet(sweep_dir / "curve.parquet")
    assert summary["saturation"] is not None and summary["slo_capacity_rps"] is not None, printed
    assert (curve.get_column("phase") == "bisect").any()

    text = page_path.read_text(encoding="utf-8")
    assert not re.search(r"<(script|img|iframe)[^>]*\ssrc=|<link\b", text), "the page must not load any resource"
    assert text.count("<script") == 1 + 3  # plotly.js once, then one call per figure
    for run_dir in curve.get_column("run_dir"):  # the table names every point's run directory, which holds its rows
        assert f">{run_dir}<" in text
        assert list((sweep_dir / run_dir / "results").glob("*.parquet"))

    dom, seconds = chromium_dom(page_path, tmp_path / "profile")
    rendered = plotly_drawing(dom)
    # the load figure follows the outcome texts: saturation, the saturation's repeat, the SLO capacity
    assert set(rendered.figure_classes) == {"fig-0-3", "fig-1-0", "fig-1-1"}, rendered.figure_classes
    assert all("js-plotly-plot" in classes for classes in rendered.figure_classes.values()), rendered.figure_classes
    saturation_rps = summary["saturation"]["level"]
    for title in (
        *LOAD_PANEL_TITLES,
        "Latency against output tokens/s",
        "Latency against achieved requests/s",
        f"SLO {SLO}",
        f"saturation: point {summary['saturation']['point']}, {saturation_rps:.3g} req/s",
        f"SLO capacity {summary['slo_capacity_rps']:.3g} req/s",
    ):
        assert title in rendered.svg_texts, (title, sorted(rendered.svg_texts))
    # achieved + offered, tokens, TTFT p95 + p50, TPOT, e2e, errors; then TTFT + e2e twice
    assert rendered.traces == 8 + 2 + 2
    assert "<h3>The curve (curve.parquet)</h3>" in dom
    print(f"sweep report.html: {page_path.stat().st_size / 1e6:.2f} MB, rendered in {seconds:.1f} s")


def test_every_figure_is_the_curve_ordered_by_load(swept):
    sweep_dir, _ = swept
    summary = json.loads((sweep_dir / "summary.json").read_text())
    curve = pl.read_parquet(sweep_dir / "curve.parquet")
    by_load = curve.sort("offered_rps")
    page = build_sweep_page(SweepSummary.model_validate(summary), curve, sweep_dir)
    load, by_tokens, by_requests = (figure.figure for figure in _figures(page))

    x = by_load.get_column("offered_rps").to_list()
    for name, column, scale in (
        ("achieved req/s", "achieved_rps", 1.0),
        ("output tokens/s", "output_tokens_per_s", 1.0),
        ("TTFT p95", "ttft_p95_ms", 1.0),
        ("TTFT p50", "ttft_p50_ms", 1.0),
        ("TPOT p95", "tpot_p95_ms", 1.0),
        ("e2e p95", "e2e_p95_ms", 1.0),
        ("error rate", "error_rate", 100.0),
    ):
        trace = _trace(load, name)
        assert trace["x"] == x, name
        assert trace["y"] == pytest.approx([v * scale for v in by_load.get_column(column).to_list()]), name
    assert _trace(load, "offered req/s")["y"] == x
    assert load.layout["xaxis"]["type"] == "log"  # 1..32 req/s
    # 8 req/s into a 6 req/s server: the sweep sees it stop following the load before any request times out
    assert [c["criterion"] for c in summary["saturation"]["criteria"]] == ["follow"]
    assert summary["saturation"]["level"] == pytest.approx(8.0)

    shapes = load.layout["shapes"]
    horizontal = [s["y0"] for s in shapes if s["type"] == "line" and s["y0"] == s["y1"]]
    assert horizontal == [300.0]  # the SLO line, on the TTFT panel
    vertical = sorted({s["x0"] for s in shapes if s["x0"] == s["x1"]})  # one line per panel, at two loads
    assert vertical == pytest.approx(sorted([summary["saturation"]["level"], summary["slo_capacity_rps"]]))

    for figure, column in ((by_tokens, "output_tokens_per_s"), (by_requests, "achieved_rps")):
        for name, latency in (("TTFT p95", "ttft_p95_ms"), ("e2e p95", "e2e_p95_ms")):
            trace = _trace(figure, name)
            assert trace["x"] == by_load.get_column(column).to_list()
            assert trace["y"] == by_load.get_column(latency).to_list()
            assert [h.split(", ")[-1] for h in trace["hovertext"]] == by_load.get_column("run_dir").to_list()

    table = next(b for s in page.sections for b in s.blocks if isinstance(b, SummaryTable))
    assert [row[0] for row in table.rows] == [str(p) for p in sorted(curve.get_column("point"))]
    marks = {row[0]: row[12] for row in table.rows}
    assert "saturation" in marks[str(summary["saturation"]["point"])]
    capacity = summary["slo_capacity_rps"]
    capacity_points = [r["point"] for r in curve.iter_rows(named=True) if r["offered_rps"] == capacity]
    assert any("SLO capacity" in marks[str(p)] for p in capacity_points)


def _curve_row(point: int, users: int, ttft: float, tokens: float, **extra) -> dict:
    return {
        "point": point,
        "phase": "ramp",
        "shape": "concurrency",
        "offered_rps": None,
        "concurrency": users,
        "requests": 100,
        "achieved_rps": tokens / 10,
        "output_tokens_per_s": tokens,
        "ttft_p50_ms": ttft / 2,
        "ttft_p95_ms": ttft,
        "tpot_p95_ms": None,
        "e2e_p95_ms": ttft * 3,
        "error_rate": 0.0,
        "slo_met": None,
        "run_dir": f"points/{point:02d}-{users}users",
    } | extra


def test_a_concurrency_sweep_is_drawn_against_users_without_an_offered_line(tmp_path):
    rows = [_curve_row(0, 1, 20.0, 100.0), _curve_row(1, 2, 22.0, 190.0), _curve_row(2, 3, 25.0, 260.0)]
    curve = pl.from_arrow(pa.Table.from_pylist(rows, schema=load_sweep.CURVE_SCHEMA))
    summary = SweepSummary.model_validate(
        {
            "target": "t",
            "shape": "concurrency",
            "levels": [1.0, 2.0, 3.0],
            "duration_s": 5.0,
            "slos": "e2e_p99=2s,e2e_p95=1s",
            "saturation": None,
            "slo_capacity_users": None,
            "points": 3,
            "curve": "curve.parquet",
        }
    )
    page = build_sweep_page(summary, curve, tmp_path)
    load = _figures(page)[0].figure
    names = [trace["name"] for trace in load.data]
    assert "offered req/s" not in names and "TPOT p95" not in names  # no TPOT in this curve: no empty panel
    assert load.layout["xaxis"]["type"] != "log"  # 1..3 users span less than LOG_AXIS_SPAN
    assert _trace(load, "TTFT p95")["x"] == [1.0, 2.0, 3.0]
    assert [s["y0"] for s in load.layout["shapes"]] == [1000.0]  # e2e_p95 is drawn; e2e_p99 is not on the curve
    texts = [b.text for b in page.sections[0].blocks if isinstance(b, Text)]
    assert "No saturation up to 3 users: the sweep did not reach the server's limit." in texts
    assert "SLO capacity: none; no load point met every SLO." in texts
    assert any("e2e_p99=2000ms" in t for t in texts)
    curve.write_parquet(tmp_path / "curve.parquet")
    (tmp_path / "summary.json").write_text(json.dumps(summary.json_dict()))
    written = write_sweep_report(tmp_path).read_text(encoding="utf-8")
    assert "closed-loop users" in written and "points/02-3users" in written


def test_report_on_a_sweep_directory_prints_the_curve_and_rebuilds_its_page(swept, capsys):
    sweep_dir, printed = swept
    summary = json.loads((sweep_dir / "summary.json").read_text())
    curve = pl.read_parquet(sweep_dir / "curve.parquet")
    assert curve.schema["saturation"] == pl.String and "repeat_of" in curve.columns  # curve version 2
    saturation = summary["saturation"]
    assert saturation["criteria"] and saturation["confirmed_by"] is not None  # the FIFO model saturates for real
    line = f"saturation at point {saturation['point']} ({saturation['level']:.3g} req/s), confirmed by point"
    assert line in printed, printed
    page = sweep_dir / SWEEP_REPORT_NAME
    page.unlink()
    assert main(["report", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert page.is_file() and saturation["reason"][:40] in page.read_text(encoding="utf-8")
    assert "Sweep of modelled (poisson)" in out and line in out
    assert f"SLO capacity: {summary['slo_capacity_rps']:.3g} req/s" in out
    for point in curve.iter_rows(named=True):  # one table row per point, in the order measured
        assert f"{point['point']} {point['phase']}" in out, out
    assert main(["report", str(sweep_dir), "--json"]) == 0
    printed_json = json.loads(capsys.readouterr().out)
    assert printed_json["summary"]["saturation"] == saturation and len(printed_json["curve"]) == curve.height


def test_report_reads_a_version_1_sweep(tmp_path, capsys):
    rows = [_curve_row(0, 1, 20.0, 100.0), _curve_row(1, 2, 22.0, 190.0)]
    old = pa.Table.from_pylist(rows, schema=load_sweep.CURVE_SCHEMA).drop_columns(
        ["sent_rps", "kept_rps", "saturation", "repeat_of", "outlier"]
    )
    pq.write_table(old.replace_schema_metadata(None), tmp_path / "curve.parquet")
    (tmp_path / "summary.json").write_text(
        json.dumps(
            {
                "kind": "shadowreplay.sweep",
                "schema_version": 1,
                "target": "t",
                "shape": "concurrency",
                "levels": [1.0, 2.0],
                "duration_s": 5.0,
                "slos": None,
                "saturation": {"point": 1, "level": 2.0, "reason": "error rate 50.0% above 10%"},
                "points": 2,
                "curve": "curve.parquet",
            }
        )
    )
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "saturation at point 1 (2 users): error rate 50.0% above 10%" in out
    assert (tmp_path / SWEEP_REPORT_NAME).is_file()
    # --slo judges a run directory, not a sweep's points after the fact
    assert main(["report", str(tmp_path), "--slo", "ttft_p95=1s"]) == 2
    assert "is a sweep directory" in capsys.readouterr().err
