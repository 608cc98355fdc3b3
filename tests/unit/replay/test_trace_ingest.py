"""Ingest of real traces and of corrupted copies: every good row kept, exactly the bad rows
quarantined with row, field and reason; inspect's figures on the real Azure trace."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shadowreplay.cli import main
from shadowreplay.replay.schemas.traffic_log import SCHEMA_VERSION, open_traffic_log
from tests.support.traces import AZURE_CONV as AZURE
from tests.support.traces import MOONCAKE


def ingest(*argv) -> int:
    return main(["ingest", *map(str, argv)])


def test_the_real_traces_ingest_with_every_row_kept(tmp_path, capsys):
    assert ingest(AZURE, "-o", tmp_path / "conv.parquet") == 0
    log = pq.read_table(tmp_path / "conv.parquet")
    assert log.num_rows == 19_366
    assert (
        open_traffic_log(tmp_path / "conv.parquet").schema_arrow.metadata[b"shadowreplay.schema_version"]
        == str(SCHEMA_VERSION).encode()
    )
    times = log.column("arrival_time").to_pylist()
    assert times == sorted(times) and times[0] == datetime(2023, 11, 16, 18, 15, 46, 680590, tzinfo=UTC)
    assert not (tmp_path / "conv.quarantine.parquet").exists()

    assert ingest(MOONCAKE, "-o", tmp_path / "mc.parquet", "--start", "2025-02-01T00:00:00Z") == 0
    mc = pq.read_table(tmp_path / "mc.parquet")
    assert mc.num_rows == 3_993
    first = json.loads(MOONCAKE.read_text().splitlines()[0])
    assert mc.column("prefix_block_ids")[0].as_py() == first["hash_ids"]
    assert mc.column("prompt_tokens")[0].as_py() == first["input_length"]
    assert mc.column("arrival_time")[0].as_py() == datetime(2025, 2, 1, tzinfo=UTC)


def test_inspect_reports_the_azure_trace_figures(tmp_path, capsys):
    assert ingest(AZURE, "-o", tmp_path / "conv.parquet") == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "conv.parquet"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows"] == 19_366
    assert round(stats["peak_to_average_1s"], 2) == 2.89 and round(stats["peak_to_average_60s"], 2) == 1.53
    lines = AZURE.read_text().splitlines()[1:]
    prompt = sorted(int(line.split(",")[1]) for line in lines)
    assert stats["prompt_tokens"]["max"] == prompt[-1]
    span = stats["span_s"]
    total = sum(int(x.split(",")[1]) + int(x.split(",")[2]) for x in lines)
    assert stats["monthly_tokens"] == pytest.approx(total / span * 30 * 86400)
    assert main(["inspect", str(tmp_path / "conv.parquet")]) == 0
    assert "2.89" in capsys.readouterr().out


def test_corrupted_azure_rows_are_quarantined_and_the_rest_kept(tmp_path, capsys):
    lines = AZURE.read_text().splitlines()
    corrupt = {
        5: "not-a-time,100,10",
        100: "2023-11-16 18:20:00.0000000,-3,10",
        2000: "2023-11-16 18:30:00.0000000,12.5,10",
        3000: "2023-11-16 18:40:00.0000000,100,",
    }
    for row, text in corrupt.items():
        lines[row] = text  # data row `row` (line 0 is the header)
    src = tmp_path / "bad.csv"
    src.write_text("\n".join(lines[:5001]) + "\n")
    assert ingest(src, "-o", tmp_path / "bad.parquet") == 0
    assert "4 rows quarantined" in capsys.readouterr().out
    kept = pq.read_table(tmp_path / "bad.parquet")
    assert kept.num_rows == 5000 - 4
    quarantine = pq.read_table(tmp_path / "bad.quarantine.parquet").to_pylist()
    assert {(q["source_row"], q["field"], q["reason"]) for q in quarantine} == {
        (5, "arrival_time", "invalid_time"),
        (100, "prompt_tokens", "negative_token_count"),
        (2000, "prompt_tokens", "non_integer_token_count"),
        (3000, "completion_tokens", "missing_value"),
    }
    assert all(q["source_file"] == str(src) and q["raw"] for q in quarantine)
    assert set(kept.column("request_id").to_pylist()).isdisjoint({f"azure-{r}" for r in corrupt})
    assert ingest(src, "-o", tmp_path / "strict.parquet", "--strict") == 1


def test_corrupted_mooncake_lines_are_quarantined(tmp_path, capsys):
    lines = MOONCAKE.read_text().splitlines()[:300]
    lines[9] = "{not json"
    lines[19] = json.dumps({"timestamp": 5, "input_length": "many", "output_length": 3})
    lines[29] = json.dumps({"timestamp": 5, "input_length": 10, "output_length": 3, "hash_ids": ["a"]})
    lines[39] = json.dumps({"input_length": 10, "output_length": 3})
    src = tmp_path / "mc.jsonl"
    src.write_text("\n".join(lines) + "\n")
    assert ingest(src, "-o", tmp_path / "mc.parquet") == 0
    assert pq.read_table(tmp_path / "mc.parquet").num_rows == 296
    got = {(q["source_row"], q["reason"]) for q in pq.read_table(tmp_path / "mc.quarantine.parquet").to_pylist()}
    assert got == {
        (10, "unparseable_row"),
        (20, "non_integer_token_count"),
        (30, "invalid_prefix_block_ids"),
        (40, "missing_value"),
    }


def test_openai_request_logs_keep_text_params_and_usage_and_come_out_sorted(tmp_path):
    def entry(i, ts, **extra):
        return json.dumps(
            {
                "id": f"r{i}",
                "timestamp": ts,
                "session_id": "s1",
                "tag": "support",
                "request": {
                    "model": "m",
                    "messages": [{"role": "user", "content": f"hi {i}"}],
                    "max_tokens": 20,
                    "temperature": 0.2,
                },
                "response": {
                    "choices": [{"message": {"content": f"hello {i}"}}],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 4},
                },
                **extra,
            }
        )

    rows = [
        entry(1, "2024-05-01T10:00:02Z"),
        entry(2, 1714557600.5),
        entry(3, "2024-05-01T10:00:01+00:00"),
        json.dumps({"id": "r4", "timestamp": "2024-05-01T10:00:03Z", "request": {"messages": "oops"}}),
        entry(1, "2024-05-01T10:00:04Z"),
    ]
    src = tmp_path / "log.jsonl"
    src.write_text("\n".join(rows) + "\n")
    assert ingest(src, "-o", tmp_path / "log.parquet") == 0
    log = pq.read_table(tmp_path / "log.parquet").to_pylist()
    assert [r["request_id"] for r in log] == ["r2", "r3", "r1"]  # arrival order, whatever the file's
    first = log[0]
    assert json.loads(first["messages"]) == [{"role": "user", "content": "hi 2"}]
    assert json.loads(first["params"]) == {"max_tokens": 20, "temperature": 0.2}
    assert (first["prompt_tokens"], first["completion_tokens"], first["response_text"]) == (9, 4, "hello 2")
    assert first["session_id"] == "s1" and first["tag"] == "support" and first["api"] == "chat"
    quarantine = {
        (q["source_row"], q["field"], q["reason"])
        for q in pq.read_table(tmp_path / "log.quarantine.parquet").to_pylist()
    }
    assert (4, "messages", "invalid_messages") in quarantine
    assert any(reason == "duplicate_request_id" for _, _, reason in quarantine)


def test_a_mapped_table_ingests(tmp_path):
    table = pa.table(
        {"ts": ["2024-01-01T00:00:01Z", "2024-01-01T00:00:00Z"], "in": [10, 20], "out": [5, 6], "route": ["a", "b"]}
    )
    pq.write_table(table, tmp_path / "export.parquet")
    assert (
        ingest(
            tmp_path / "export.parquet",
            "-o",
            tmp_path / "log.parquet",
            "--map",
            "ts=arrival_time",
            "--map",
            "in=prompt_tokens",
            "--map",
            "out=completion_tokens",
            "--map",
            "route=tag",
        )
        == 0
    )
    log = pq.read_table(tmp_path / "log.parquet").to_pylist()
    assert [(r["prompt_tokens"], r["completion_tokens"], r["tag"]) for r in log] == [(20, 6, "b"), (10, 5, "a")]


def test_unreadable_files_get_one_line_and_no_traceback(tmp_path, capsys):
    bad = tmp_path / "corrupt.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    assert ingest(bad, "-o", tmp_path / "o.parquet") == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert ingest(tmp_path / "missing.csv", "-o", tmp_path / "o.parquet") == 1
    assert main(["inspect", str(bad)]) == 2
    assert "Traceback" not in capsys.readouterr().err
