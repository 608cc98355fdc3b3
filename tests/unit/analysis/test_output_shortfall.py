"""The output shortfall and the length flags in the summary, from the Parquet result rows: rows that
asked for an exact output length (expected_completion_tokens) and were served fewer tokens."""

from __future__ import annotations

from shadowreplay.analysis.data.run_data import load_run
from shadowreplay.analysis.summary.run_summary import summarize
from shadowreplay.analysis.summary.tables import output_lengths_table, summary_tables
from tests.support.results_factory import result_row, write_results


def row(request_id: str, expected: int | None, served: int, **flags) -> dict:
    made = result_row(request_id, gaps_ms=[5.0] * (served - 1))
    made.update(expected_completion_tokens=expected, **flags)
    return made


def test_short_rows_are_counted_from_the_rows(tmp_path):
    rows = [
        row("exact", 10, 10),
        row("short", 10, 6, clamped=True),
        row("natural", None, 3, raised=True),  # nothing exact asked: never short
        {**row("failed", 10, 2), "status": "timeout", "error": "t"},  # an error, not a shortfall
    ]
    write_results(tmp_path, rows, shards=1)
    lengths = summarize(load_run(tmp_path)).targets["target-a"].all.output_lengths
    assert lengths.exact_checked == 2 and lengths.short == 1
    assert (lengths.expected_tokens, lengths.tokens_short) == (20, 4)
    assert (lengths.clamped, lengths.raised) == (1, 1)
    table = output_lengths_table(summarize(load_run(tmp_path)))
    assert table is not None and table.rows[0][2:] == ["4", "1", "1", "2", "1", "50.0%", "4/20"]


def test_no_table_without_exact_lengths_or_flags(tmp_path):
    write_results(tmp_path, [row("a", None, 3)], shards=1)
    summary = summarize(load_run(tmp_path))
    assert output_lengths_table(summary) is None
    assert all(t.title != "Output lengths" for t in summary_tables(summary))
