"""The report's tables in a 100-column terminal (analysis/summary/terminal_tables.py): every line fits,
no target name is cut, no number is cut, and a wide terminal keeps the boxed tables."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from rich.console import Console

from shadowreplay.analysis.data.run_data import load_run
from shadowreplay.analysis.data.telemetry_data import load_telemetry
from shadowreplay.analysis.metrics.slo import parse_slos
from shadowreplay.analysis.summary.run_summary import summarize
from shadowreplay.analysis.summary.tables import SummaryTable
from shadowreplay.analysis.summary.terminal_tables import terminal_table
from shadowreplay.verbs.report import print_summary
from tests.support.results_factory import result_row, write_results
from tests.support.telemetry_factory import gpu_samples, write_telemetry

CANDIDATE = "candidate-qwen3-32b-h100"
BASELINE = "baseline-llama-3.3-70b-h100"


@pytest.fixture
def summary(tmp_path):
    rows = []
    for i in range(40):
        tag = ("chat", "summarize", "code-review")[i % 3]
        rows.append(
            result_row(
                f"r{i}", target=CANDIDATE, scheduled_s=i * 0.25, ttft_ms=1000.0 + 97 * i, gaps_ms=[21.5] * 40, tag=tag
            )  # fmt: skip
        )
        status = "timeout" if i % 13 == 5 else "ok"
        rows.append(
            result_row(
                f"r{i}",
                target=BASELINE,
                scheduled_s=i * 0.25,
                ttft_ms=None if status != "ok" else 80.0 + i,
                tag=tag,
                status=status,
                http_status=None if status != "ok" else 200,
            )  # fmt: skip
        )
    write_results(tmp_path, rows, shards=1, manifest={"run_id": "narrow"})
    t = np.linspace(0.0, 10.0, 41)
    telemetry = []
    for device in ("0", "1"):
        telemetry += gpu_samples(t, np.full(41, 87.0), np.full(41, 612.5), np.full(41, 71.5e9), host="gpu-node-17",
                                 device=device)  # fmt: skip
    write_telemetry(tmp_path, telemetry)
    return summarize(
        load_run(tmp_path),
        parse_slos("ttft_p95=500ms,tpot_p95=50ms,e2e_p99=2s"),
        telemetry=load_telemetry(tmp_path),
    )


def console_text(width: int, draw) -> str:
    """What `draw(console)` prints on a `width`-column console, as plain text."""
    out = io.StringIO()
    draw(Console(width=width, file=out, force_terminal=False, color_system=None))
    return out.getvalue()


def rendered(summary, width: int) -> str:
    return console_text(width, lambda console: print_summary(summary, console))


def test_every_table_fits_100_columns_with_target_names_whole(summary):
    text = rendered(summary, 100)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert "…" not in text  # nothing cut with an ellipsis: not a name, a tag, a number
    # each table naming targets in a column shows both names whole: overview, errors, SLOs (per target and tag)
    for name in (CANDIDATE, BASELINE):
        rows_with_name = [line for line in lines if re.match(rf"^\W*{re.escape(name)}\s", line)]
        assert len(rows_with_name) >= 4 + 3 * 4, name  # overview (all + 3 tags) and SLOs (3 SLOs x 4 slices)
    assert "gpu-node-17:0" in text and "gpu-node-17:1" in text
    for heading in ("Requests and throughput", "Latency (ms): " + CANDIDATE, "SLOs", "GPU utilisation"):
        assert heading in text
    for figure in ("ttft_p95=500ms", "tpot_p95=50ms", "e2e_p99=2000ms", "code-review", "summarize"):
        assert figure in text


def test_a_wide_terminal_keeps_the_boxed_tables(summary):
    text = rendered(summary, 200)
    assert "┏" in text and "┃ Target" in text and "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 200


def test_a_many_column_table_fits_100_columns(summary):
    # the shape of the server-histogram table: 11 columns, bucket texts, a long target name
    columns = ["Target", "Metric", "vLLM N", "Our N", "Quantile", "vLLM bucket ms", "vLLM est ms", "Ours ms",
               "Our bucket ms", "Higher", "Verdict"]  # fmt: skip
    rows = [
        [
            CANDIDATE,
            "TTFT",
            "12,345",
            "12,345",
            "p99",
            "2,560,000-+Inf",
            "1,234.5",
            "1,240.1",
            "1,000-2,500",
            "ours",
            "DISAGREE",
        ],  # fmt: skip
        [CANDIDATE, "ITL", "", "", "p50", "20-40", "21.3", "21.5", "20-40", "same_bucket", "agree"],
    ]
    table = SummaryTable("Server histograms", columns, rows, frozenset({"vLLM N", "Our N", "vLLM est ms", "Ours ms"}))
    text = console_text(100, lambda console: console.print(terminal_table(table, 100)))
    assert max(len(line) for line in text.splitlines()) <= 100
    assert text.count(CANDIDATE) == 2 and "1,234.5" in text and "12,345" in text and "…" not in text


def test_a_target_name_wider_than_any_layout_is_folded_not_cut():
    name = "x" * 60 + "-end"
    numeric = frozenset({"Requests", "Req/s"})
    table = SummaryTable("t", ["Target", "Requests", "Req/s"], [[name, "1,234", "12.50"]], numeric)
    text = console_text(40, lambda console: console.print(terminal_table(table, 40)))
    assert max(len(line) for line in text.splitlines()) <= 40 and "…" not in text
    first_column = "".join(line.split()[0] for line in text.splitlines()[2:] if line.strip())
    assert name in first_column and "1,234" in text and "12.50" in text
