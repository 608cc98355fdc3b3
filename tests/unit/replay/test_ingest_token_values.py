"""Token counts in every ingest format: integral floats (374.0, as pandas writes integer columns
with gaps) are kept as integers, non-integral ones (374.5) are quarantined as non-integer, and an
empty value is a missing value (`missing_value` where the count is required, absent where not),
each quarantined row naming its file, row and field."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shadowreplay.replay.ingest import ingest, quarantine_path
from shadowreplay.replay.schemas.traffic_log import open_traffic_log


def kept_counts(log: Path) -> list[tuple[int | None, int | None]]:
    table = open_traffic_log(log).read()
    return list(zip(table.column("prompt_tokens").to_pylist(), table.column("completion_tokens").to_pylist()))


def quarantined(log: Path) -> dict[int, tuple[str, str, str, str]]:
    """source_row -> (source_file, field, reason, detail)."""
    rows = pq.read_table(quarantine_path(log)).to_pylist()
    return {r["source_row"]: (r["source_file"], r["field"], r["reason"], r["detail"]) for r in rows}


def test_an_azure_csv_keeps_integral_floats_and_reports_empty_fields_as_missing(tmp_path):
    src = tmp_path / "azure.csv"
    src.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.0000000,374.0,44.0\n"
        "2023-11-16 18:15:47.0000000,374.5,44\n"
        "2023-11-16 18:15:48.0000000,,44\n"
        "2023-11-16 18:15:49.0000000,374,\n"
        "2023-11-16 18:15:50.0000000,  ,44\n"
        "2023-11-16 18:15:51.0000000,12.00,0.0\n"
    )
    log = tmp_path / "log.parquet"
    summary = ingest(src, log)
    assert summary.format == "azure" and summary.kept == 2
    assert kept_counts(log) == [(374, 44), (12, 0)]
    assert quarantined(log) == {
        2: (str(src), "prompt_tokens", "non_integer_token_count", "prompt_tokens='374.5' is not an integer"),
        3: (str(src), "prompt_tokens", "missing_value", "prompt_tokens is empty"),
        4: (str(src), "completion_tokens", "missing_value", "completion_tokens is empty"),
        5: (str(src), "prompt_tokens", "missing_value", "prompt_tokens is empty"),
    }


def test_a_long_azure_csv_of_integral_floats_is_kept_whole(tmp_path):
    """Blocks the typed read refuses (it reads integers only) are read as text, with the same values."""
    src = tmp_path / "azure.csv"
    rows = [f"2023-11-16 18:{i // 60 % 60:02d}:{i % 60:02d}.0000000,{i}.0,{i % 7}.0" for i in range(20_000)]
    src.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    log = tmp_path / "log.parquet"
    summary = ingest(src, log)
    assert (summary.kept, summary.quarantined_total) == (20_000, 0)
    assert sorted(kept_counts(log)) == sorted((i, i % 7) for i in range(20_000))


def test_a_table_csv_keeps_integral_floats_and_leaves_empty_optional_counts_absent(tmp_path):
    src = tmp_path / "table.csv"
    src.write_text(
        "arrival_time,prompt,prompt_tokens,completion_tokens\n"
        "2025-01-01T00:00:00Z,a,374.0,44.0\n"
        "2025-01-01T00:00:01Z,b,374.5,44\n"
        "2025-01-01T00:00:02Z,c,,44\n"
        "2025-01-01T00:00:03Z,d,374,\n"
    )
    log = tmp_path / "log.parquet"
    assert ingest(src, log).kept == 3
    assert kept_counts(log) == [(374, 44), (None, 44), (374, None)]
    assert quarantined(log) == {
        2: (str(src), "prompt_tokens", "non_integer_token_count", "prompt_tokens='374.5' is not an integer")
    }


def test_mooncake_jsonl_takes_integral_floats_as_numbers_or_text_and_empty_as_missing(tmp_path):
    lines = [
        {"timestamp": 0, "input_length": 374.0, "output_length": 44.0},
        {"timestamp": 1, "input_length": "374.0", "output_length": "44"},
        {"timestamp": 2, "input_length": 374.5, "output_length": 44},
        {"timestamp": 3, "input_length": None, "output_length": 44},
        {"timestamp": 4, "input_length": "", "output_length": 44},
        {"timestamp": 5, "input_length": 10, "output_length": " "},
    ]
    src = tmp_path / "trace.jsonl"
    src.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    log = tmp_path / "log.parquet"
    summary = ingest(src, log)
    assert summary.format == "mooncake" and summary.kept == 2
    assert kept_counts(log) == [(374, 44), (374, 44)]
    assert quarantined(log) == {
        3: (str(src), "prompt_tokens", "non_integer_token_count", "prompt_tokens='374.5' is not an integer"),
        4: (str(src), "prompt_tokens", "missing_value", "prompt_tokens is empty"),
        5: (str(src), "prompt_tokens", "missing_value", "prompt_tokens is empty"),
        6: (str(src), "completion_tokens", "missing_value", "completion_tokens is empty"),
    }


def test_openai_jsonl_usage_takes_integral_floats_and_an_empty_count_is_absent(tmp_path):
    def line(second: int, usage: dict, **top) -> str:
        request = {"messages": [{"role": "user", "content": "hi"}]}
        return json.dumps(
            {"timestamp": 1_700_000_000 + second, "request": request, "response": {"usage": usage}, **top}
        )

    src = tmp_path / "requests.jsonl"
    src.write_text(
        "\n".join(
            [
                line(0, {"prompt_tokens": 374.0, "completion_tokens": "44.0"}),
                line(1, {"prompt_tokens": 374.5, "completion_tokens": 44}),
                line(2, {"prompt_tokens": "", "completion_tokens": 44}),
                line(3, {"prompt_tokens": 9, "completion_tokens": 4}, prompt_tokens=""),  # blank: usage counts
            ]
        )
        + "\n"
    )
    log = tmp_path / "log.parquet"
    assert ingest(src, log).kept == 3
    assert kept_counts(log) == [(374, 44), (None, 44), (9, 4)]
    assert quarantined(log) == {
        2: (str(src), "prompt_tokens", "non_integer_token_count", "prompt_tokens='374.5' is not an integer")
    }


def test_a_parquet_table_with_float_or_text_counts_keeps_the_integral_ones(tmp_path):
    times = [datetime(2025, 1, 1, 0, 0, i, tzinfo=UTC) for i in range(5)]
    src = tmp_path / "table.parquet"
    pq.write_table(
        pa.table(
            {
                "arrival_time": pa.array(times),
                "prompt": ["a", "b", "c", "d", "e"],
                "prompt_tokens": pa.array([374.0, 374.5, None, 10.0, float("nan")], pa.float64()),
                "completion_tokens": pa.array(["44.0", "44", "5", "", "3"], pa.string()),
            }
        ),
        src,
    )
    log = tmp_path / "log.parquet"
    assert ingest(src, log).kept == 3
    assert kept_counts(log) == [(374, 44), (None, 5), (10, None)]
    assert quarantined(log) == {
        2: (str(src), "prompt_tokens", "non_integer_token_count", "prompt_tokens=374.5 is not an integer"),
        5: (str(src), "prompt_tokens", "non_integer_token_count", "prompt_tokens=nan is not an integer"),
    }
