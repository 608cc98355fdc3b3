"""replay/run/result_rows.py: one attempt's StreamOutcome as a result row, shared by every row producer."""

from __future__ import annotations

import pyarrow as pa

from shadowreplay.replay.run.result_rows import result_row
from shadowreplay.replay.schemas.results import RESULTS_SCHEMA, StreamOutcome

PLAN_ROW = {
    "request_id": "r1",
    "scheduled_s": 2.0,
    "expected_prompt_tokens": 32,
    "expected_completion_tokens": 3,
    "clamped": False,
    "tag": "chat",
}


def shifted(perf: float | None) -> float | None:
    """A run clock whose epoch is 100 s after perf_counter's zero."""
    return None if perf is None else perf - 100.0


def test_derived_times_follow_the_run_clock():
    outcome = StreamOutcome(
        status="ok",
        sent=102.5,
        first_token=102.6,
        last_token=102.8,
        done=102.81,
        token_times=[102.6, 102.7, 102.8],
        completion_tokens=3,
        http_status=200,
        output_text="a b c",
    )
    row = result_row(
        run_id="run", target="t", worker="w", row=PLAN_ROW, outcome=outcome, attempt=2, final=False, to_run_s=shifted
    )
    assert (row["sent_s"], row["done_s"]) == (2.5, 102.81 - 100.0)
    assert (
        round(row["lateness_ms"], 6) == 500.0 and round(row["ttft_ms"], 6) == 100.0 and round(row["e2e_ms"], 6) == 300.0
    )
    assert [round(t, 6) for t in row["token_times_ms"]] == [100.0, 200.0, 300.0]
    assert (row["attempt"], row["final"], row["output_text"], row["tag"]) == (2, False, None, "chat")
    assert pa.Table.from_pylist([row], schema=RESULTS_SCHEMA).num_rows == 1  # every column, right types


def test_unsent_request_has_no_times_and_text_is_kept_only_when_asked():
    outcome = StreamOutcome(status="cancelled", error="run cancelled before send", output_text="partial")
    row = result_row(
        run_id="run",
        target="t",
        worker="w",
        row=PLAN_ROW,
        outcome=outcome,
        attempt=1,
        final=True,
        to_run_s=shifted,
        keep_output_text=True,
    )
    assert row["sent_s"] is None and row["lateness_ms"] is None and row["ttft_ms"] is None and row["e2e_ms"] is None
    assert row["token_times_ms"] == [] and row["output_text"] == "partial" and row["status"] == "cancelled"
