"""Replay plans: window, limit, duration, clamps and the split across workers."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadowreplay.replay.run.plan import (
    LengthClamp,
    PlanError,
    Window,
    arrival_offsets_s,
    build_plan,
    parse_duration_s,
    prompts_over_max,
    select_rows,
    split_plan,
)
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA


def make_log(path, offsets, prompt_tokens=None, sessions=None, texts=None, completion_tokens=None):
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    n = len(offsets)
    rows = [
        {
            "request_id": f"r{i}",
            "arrival_time": t0 + timedelta(seconds=float(o)),
            "session_id": sessions[i] if sessions else None,
            "api": "chat",
            "messages": texts[i] if texts else None,
            "prompt": None,
            "params": None,
            "prompt_tokens": (prompt_tokens or [100] * n)[i],
            "completion_tokens": (completion_tokens or [50] * n)[i],
            "prefix_block_ids": None,
            "tag": None,
            "response_text": None,
            "reference": None,
        }
        for i, o in enumerate(offsets)
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=TRAFFIC_LOG_SCHEMA), path)
    return path


def test_window_and_limit_select_by_arrival_offset(tmp_path):
    log = make_log(tmp_path / "log.parquet", [5, 0, 1, 2, 3, 4])  # unsorted on purpose
    rows = select_rows(log, Window.parse("1..4"))
    assert rows.column("request_id").to_pylist() == ["r2", "r3", "r4"]
    assert list(arrival_offsets_s(rows)) == [0, 1, 2]
    assert select_rows(log, Window.parse("..2"), limit=1).column("request_id").to_pylist() == ["r1"]
    with pytest.raises(PlanError, match="no rows"):
        select_rows(log, Window.parse("100.."))


@pytest.mark.parametrize("text", ["5", "1..0", "a..b", "3..3"])
def test_bad_windows_are_refused(text):
    with pytest.raises(PlanError):
        Window.parse(text)


@given(st.floats(min_value=0, max_value=1e5, allow_nan=False), st.sampled_from(["", "s", "ms", "m", "h"]))
def test_durations_parse_with_units(value, unit):
    scale = {"": 1, "s": 1, "ms": 0.001, "m": 60, "h": 3600}[unit]
    assert parse_duration_s(f"{value!r}{unit}") == pytest.approx(value * scale)


def test_prompt_clamp_cuts_synthesized_rows_only_and_output_clamp_cuts_every_row(tmp_path):
    log = make_log(
        tmp_path / "log.parquet",
        [0, 1, 2],
        prompt_tokens=[3000, 10, 3000],
        texts=[None, None, '[{"role": "user", "content": "hi"}]'],
    )
    rows = select_rows(log)
    clamp = LengthClamp(max_prompt_tokens=1000, max_completion_tokens=20)
    plan = build_plan(rows, arrival_offsets_s(rows), clamp)
    # Recorded text is never cut (its prompt stays 3000 and is counted apart); outputs are cut everywhere.
    assert plan.column("expected_prompt_tokens").to_pylist() == [1000, 10, 3000]
    assert plan.column("expected_completion_tokens").to_pylist() == [20, 20, 20]
    assert plan.column("clamped").to_pylist() == [True, True, True]
    assert plan.column("raised").to_pylist() == [False, False, False]
    assert prompts_over_max(plan, clamp) == 1
    assert prompts_over_max(plan, LengthClamp(max_completion_tokens=20)) == 0


def test_recorded_output_lengths_are_asked_exactly_for_text_rows_too(tmp_path):
    log = make_log(
        tmp_path / "log.parquet",
        [0, 1, 2, 3],
        texts=[None, '[{"role": "user", "content": "hi"}]', None, '[{"role": "user", "content": "yo"}]'],
        completion_tokens=[41, 41, 0, None],
    )
    rows = select_rows(log)
    plan = build_plan(rows, arrival_offsets_s(rows), LengthClamp(max_completion_tokens=64))
    # Row 2 recorded 0 output tokens: asked for 1 and raised; row 3 has no recorded length: natural, capped.
    assert plan.column("expected_completion_tokens").to_pylist() == [41, 41, 1, None]
    assert plan.column("completion_cap").to_pylist() == [41, 64, 1, 64]
    assert plan.column("clamped").to_pylist() == [False, False, False, False]
    assert plan.column("raised").to_pylist() == [False, False, True, False]


def test_natural_output_lengths_ask_for_no_exact_length(tmp_path):
    log = make_log(
        tmp_path / "log.parquet",
        [0, 1, 2],
        texts=[None, '[{"role": "user", "content": "hi"}]', '[{"role": "user", "content": "yo"}]'],
        completion_tokens=[1968, 1968, 41],
    )
    rows = select_rows(log)
    plan = build_plan(rows, arrival_offsets_s(rows), LengthClamp(max_completion_tokens=64, output_lengths="natural"))
    assert plan.column("expected_completion_tokens").to_pylist() == [None, None, None]
    # A synthesized row is capped at its recorded length (cut to the bound); a text row at the bound.
    assert plan.column("completion_cap").to_pylist() == [64, 64, 64]
    assert plan.column("clamped").to_pylist() == [True, True, False]
    unbounded = build_plan(rows, arrival_offsets_s(rows), LengthClamp(output_lengths="natural"))
    assert unbounded.column("completion_cap").to_pylist() == [1968, None, None]
    with pytest.raises(PlanError, match="output lengths"):
        LengthClamp(output_lengths="exact")


def test_duration_drops_late_sends_and_speed_is_the_callers(tmp_path):
    log = make_log(tmp_path / "log.parquet", [0, 10, 20, 30])
    rows = select_rows(log)
    plan = build_plan(rows, arrival_offsets_s(rows) / 2.0, duration_s=10.0)
    assert plan.column("scheduled_s").to_pylist() == [0.0, 5.0]


def test_split_keeps_sessions_together_and_loses_nothing(tmp_path):
    sessions = [None, "a", "b", "a", None, "b", "a", None]
    log = make_log(tmp_path / "log.parquet", list(range(8)), sessions=sessions)
    rows = select_rows(log)
    plan = build_plan(rows, arrival_offsets_s(rows))
    shards = split_plan(plan, 3)
    ids = sorted(i for s in shards for i in s.column("request_id").to_pylist())
    assert ids == sorted(plan.column("request_id").to_pylist())
    for session in ("a", "b"):
        holders = [k for k, s in enumerate(shards) if session in s.column("session_id").to_pylist()]
        assert len(holders) == 1
    for shard in shards:
        times = shard.column("scheduled_s").to_numpy()
        assert np.all(np.diff(times) >= 0)
