"""The ingest engine (replay/ingest/) on real traces, corrupted copies, request logs, mapped tables,
unordered input and unreadable files; property-based tests for its validators."""

from __future__ import annotations

import csv
import gzip
import json
import random
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowreplay.cli import main
from shadowreplay.replay.ingest import IngestOptions, detect_format, ingest, quarantine_path
from shadowreplay.replay.ingest.casting import cast_locating_failures
from shadowreplay.replay.ingest.csv_blocks import CsvRecordReader
from shadowreplay.replay.ingest.json_fields import messages_problem
from shadowreplay.replay.ingest.log_writer import TrafficLogWriter
from shadowreplay.replay.ingest.problems import RowProblems
from shadowreplay.replay.ingest.quarantine import QUARANTINE_SCHEMA
from shadowreplay.replay.ingest.times import arrival_times
from shadowreplay.replay.ingest.token_counts import INT32_MAX, token_counts
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA, open_traffic_log
from tests.support.traces import AZURE_CONV as AZURE
from tests.support.traces import MOONCAKE

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"


def read_log(path: Path) -> pa.Table:
    return open_traffic_log(path).read()


def quarantined(log_path: Path) -> dict[int, tuple[str | None, str, str]]:
    """source_row -> (field, reason, raw) of the quarantine next to `log_path`."""
    rows = pq.read_table(quarantine_path(log_path)).to_pylist()
    return {row["source_row"]: (row["field"], row["reason"], row["raw"]) for row in rows}


def azure_time(text: str) -> datetime:
    """An Azure TIMESTAMP (7 decimals) read independently of the engine, truncated to microseconds."""
    whole, fraction = text.split(".")
    return datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(microsecond=int(fraction[:6]), tzinfo=UTC)


# ---- the real traces -------------------------------------------------------------------------


def test_the_azure_trace_ingests_every_row_with_its_values(tmp_path):
    summary = ingest(AZURE, tmp_path / "conv.parquet")
    assert (summary.format, summary.kept, summary.quarantined_total, summary.in_arrival_order) == (
        "azure",
        19_366,
        0,
        True,
    )
    assert not quarantine_path(tmp_path / "conv.parquet").exists()
    log = read_log(tmp_path / "conv.parquet")
    assert log.schema.equals(TRAFFIC_LOG_SCHEMA) and log.schema.metadata == TRAFFIC_LOG_SCHEMA.metadata
    source = list(csv.reader(AZURE.read_text().splitlines()[1:]))
    assert log.column("request_id").to_pylist() == [f"azure-{row}" for row in range(1, len(source) + 1)]
    assert log.column("arrival_time").to_pylist() == [azure_time(fields[0]) for fields in source]
    assert log.column("prompt_tokens").to_pylist() == [int(fields[1]) for fields in source]
    assert log.column("completion_tokens").to_pylist() == [int(fields[2]) for fields in source]
    assert set(log.column("api").to_pylist()) == {"chat"}
    assert log.column("messages").null_count == log.num_rows


def test_the_mooncake_trace_ingests_with_prefix_block_ids(tmp_path):
    start = datetime(2025, 3, 1, 12, tzinfo=UTC)
    summary = ingest(MOONCAKE, tmp_path / "mc.parquet", IngestOptions(start=start, tag="mooncake"))
    assert (summary.format, summary.kept, summary.quarantined_total) == ("mooncake", 3_993, 0)
    log = read_log(tmp_path / "mc.parquet")
    source = [json.loads(line) for line in MOONCAKE.read_text().splitlines()]
    assert log.column("request_id").to_pylist() == [f"mooncake-{line}" for line in range(1, len(source) + 1)]
    assert log.column("prefix_block_ids").to_pylist() == [entry["hash_ids"] for entry in source]
    assert log.column("prompt_tokens").to_pylist() == [entry["input_length"] for entry in source]
    assert log.column("completion_tokens").to_pylist() == [entry["output_length"] for entry in source]
    assert log.column("arrival_time").to_pylist() == [
        start + timedelta(milliseconds=entry["timestamp"]) for entry in source
    ]
    assert set(log.column("tag").to_pylist()) == {"mooncake"}


def test_mooncake_times_start_at_the_documented_default(tmp_path):
    ingest(MOONCAKE, tmp_path / "mc.parquet")
    assert read_log(tmp_path / "mc.parquet").column("arrival_time")[0].as_py() == datetime(2024, 1, 1, tzinfo=UTC)


# ---- corrupted copies ------------------------------------------------------------------------


def test_a_corrupted_azure_copy_quarantines_exactly_the_corrupted_rows(tmp_path):
    lines = AZURE.read_text().splitlines()[:2001]  # header + data rows 1..2000
    original = {row: lines[row].split(",") for row in range(1, 2001)}
    corrupt = {
        3: ("not-a-time,100,10", "arrival_time", "invalid_time"),
        10: ("2023-11-16 18:20:00.0000000,-7,10", "prompt_tokens", "negative_token_count"),
        11: ("2023-11-16 18:20:00.0000000,100,3.5", "completion_tokens", "non_integer_token_count"),
        12: ("2023-11-16 18:20:00.0000000,abc,10", "prompt_tokens", "non_integer_token_count"),
        13: ("2023-11-16 18:20:00.0000000,100,", "completion_tokens", "missing_value"),
        14: ("2023-11-16 18:20:00.0000000,99999999999,10", "prompt_tokens", "token_count_out_of_range"),
        700: ("2023-13-45 25:00:00.0000000,100,10", "arrival_time", "invalid_time"),
        1200: ("2023-11-16 18:20:00.0000000,100,10,extra", None, "unparseable_row"),
        1201: ("2023-11-16 18:20:00.0000000,100", None, "unparseable_row"),
    }
    for row, (text, _, _) in corrupt.items():
        lines[row] = text
    lines[1500] = ""  # a blank line: counted as a row number, neither kept nor quarantined
    src = tmp_path / "azure_bad.csv"
    src.write_text("\n".join(lines) + "\n")

    summary = ingest(src, tmp_path / "bad.parquet")
    assert summary.kept == 2000 - len(corrupt) - 1
    assert quarantined(tmp_path / "bad.parquet") == {
        row: (field, reason, text) for row, (text, field, reason) in corrupt.items()
    }
    log = read_log(tmp_path / "bad.parquet")
    kept_rows = [int(request_id.removeprefix("azure-")) for request_id in log.column("request_id").to_pylist()]
    assert sorted(kept_rows) == sorted(set(range(1, 2001)) - set(corrupt) - {1500})
    for row, prompt, completion in zip(
        kept_rows, log.column("prompt_tokens").to_pylist(), log.column("completion_tokens").to_pylist()
    ):
        assert (prompt, completion) == (int(original[row][1]), int(original[row][2]))


@pytest.mark.parametrize("blank", ["", "\r"])
def test_a_blank_line_in_a_clean_csv_is_skipped_and_keeps_its_row_number(tmp_path, blank):
    """A block Arrow would read whole (no bad record in it): the blank line still neither kept nor
    quarantined, the rows after it numbered as in the file."""
    lines = AZURE.read_text().splitlines()[:301]
    lines[150] = blank
    src = tmp_path / "azure_blank.csv"
    src.write_text("\n".join(lines) + "\n", newline="")
    summary = ingest(src, tmp_path / "blank.parquet")
    assert summary.kept == 299 and summary.quarantined_total == 0
    kept = [
        int(r.removeprefix("azure-")) for r in read_log(tmp_path / "blank.parquet").column("request_id").to_pylist()
    ]
    assert sorted(kept) == sorted(set(range(1, 301)) - {150})


def test_a_corrupted_mooncake_copy_quarantines_exactly_the_corrupted_lines(tmp_path):
    lines = MOONCAKE.read_text().splitlines()[:400]
    corrupt = {
        5: ("{not json", None, "unparseable_row"),
        6: ("[1, 2]", None, "unparseable_row"),
        20: (
            json.dumps({"timestamp": 9, "input_length": -1, "output_length": 3}),
            "prompt_tokens",
            "negative_token_count",
        ),
        21: (
            json.dumps({"timestamp": 9, "input_length": 10, "output_length": 2.5}),
            "completion_tokens",
            "non_integer_token_count",
        ),
        22: (
            json.dumps({"timestamp": 9, "input_length": 10, "output_length": 3, "hash_ids": [1, "x"]}),
            "prefix_block_ids",
            "invalid_prefix_block_ids",
        ),
        23: (json.dumps({"timestamp": "soon", "input_length": 10, "output_length": 3}), "arrival_time", "invalid_time"),
        24: (json.dumps({"input_length": 10, "output_length": 3}), "arrival_time", "missing_value"),
        25: (json.dumps({"timestamp": 9, "output_length": 3}), "prompt_tokens", "missing_value"),
    }
    for line, (text, _, _) in corrupt.items():
        lines[line - 1] = text
    lines[299] = json.dumps(
        {"timestamp": 9, "input_length": 7.0, "output_length": 3}
    )  # an integral float is an integer
    lines[199] = ""  # a blank line: skipped
    src = tmp_path / "mc_bad.jsonl"
    src.write_text("\n".join(lines) + "\n")

    summary = ingest(src, tmp_path / "bad.parquet")
    assert summary.kept == 400 - len(corrupt) - 1
    assert quarantined(tmp_path / "bad.parquet") == {
        line: (field, reason, text) for line, (text, field, reason) in corrupt.items()
    }
    log = read_log(tmp_path / "bad.parquet").to_pylist()
    kept_lines = {int(row["request_id"].removeprefix("mooncake-")) for row in log}
    assert kept_lines == set(range(1, 401)) - set(corrupt) - {200}
    assert next(row for row in log if row["request_id"] == "mooncake-300")["prompt_tokens"] == 7


# ---- request logs and mapped tables ------------------------------------------------------------


def test_an_openai_request_log_keeps_text_params_usage_and_finds_bad_lines(tmp_path):
    entries = [
        {
            "id": "a",
            "timestamp": "2024-05-01T10:00:02Z",
            "session_id": "s1",
            "tag": "support",
            "reference": "ref",
            "request": {
                "model": "m",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 5,
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "response_format": {"type": "json_object"},
            },
            "response": {
                "choices": [{"message": {"content": "yo"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            },
        },
        {
            "custom_id": "b",
            "url": "/v1/completions",
            "body": {"prompt": "Once", "max_tokens": 7, "stop": ["\n"]},
            "timestamp": 1714557601,
        },
        {"request_id": "c", "time": 1714557600500, "request": {"messages": [{"role": "robot", "content": "x"}]}},
        {"timestamp": "2024-05-01T12:00:03+02:00", "prompt_tokens": 10, "completion_tokens": 3},
        {"timestamp": "2024-05-01T10:00:03", "request": {}},
        {"id": "a", "timestamp": "2024-05-01T10:00:09Z", "messages": [{"role": "user", "content": "again"}]},
        {"id": "e", "timestamp": "2024-05-01T10:00:09Z", "messages": "not a list"},
        {"id": "f", "created_at": "yesterday", "prompt": "p"},
        {
            "id": "g",
            "timestamp": 1714557605,
            "request": {"prompt": "p", "messages": [{"role": "user", "content": "both"}]},
        },
        {"id": "h", "timestamp": 1714557606, "request": {"prompt": "p"}, "prompt_tokens": -2},
        {
            "id": "i",
            "response": {
                "body": {
                    "id": "resp",
                    "created": 1714557607,
                    "choices": [{"text": "done"}],
                    "usage": {"prompt_tokens": 4},
                }
            },
            "body": {"prompt": "q"},
        },
    ]
    lines = [json.dumps(entry) for entry in entries] + ["", "[1]", "{broken"]
    src = tmp_path / "requests.jsonl"
    src.write_text("\n".join(lines) + "\n")

    summary = ingest(src, tmp_path / "log.parquet", IngestOptions(tag="default-tag"))
    assert summary.format == "openai-jsonl" and not summary.in_arrival_order
    log = {row["request_id"]: row for row in read_log(tmp_path / "log.parquet").to_pylist()}
    assert list(log) == ["b", "a", "openai-jsonl-4", "i"]  # arrival order
    a = log["a"]
    assert json.loads(a["messages"]) == [{"role": "user", "content": "hi"}]
    assert json.loads(a["params"]) == {
        "max_tokens": 5,
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "response_format": {"type": "json_object"},
    }
    assert (a["api"], a["prompt_tokens"], a["completion_tokens"], a["response_text"]) == ("chat", 3, 2, "yo")
    assert (a["session_id"], a["tag"], a["reference"]) == ("s1", "support", "ref")
    assert a["arrival_time"] == datetime(2024, 5, 1, 10, 0, 2, tzinfo=UTC)
    b = log["b"]
    assert (b["api"], b["prompt"], json.loads(b["params"]), b["tag"]) == (
        "completions",
        "Once",
        {"max_tokens": 7, "stop": ["\n"]},
        "default-tag",
    )
    assert b["arrival_time"] == datetime(2024, 5, 1, 10, 0, 1, tzinfo=UTC)
    fourth = log["openai-jsonl-4"]
    assert fourth["arrival_time"] == datetime(2024, 5, 1, 10, 0, 3, tzinfo=UTC)
    assert (fourth["api"], fourth["prompt_tokens"], fourth["messages"]) == ("chat", 10, None)
    i = log["i"]
    assert (i["arrival_time"], i["response_text"], i["prompt_tokens"]) == (
        datetime(2024, 5, 1, 10, 0, 7, tzinfo=UTC),
        "done",
        4,
    )

    assert {row: (field, reason) for row, (field, reason, _) in quarantined(tmp_path / "log.parquet").items()} == {
        3: ("messages", "invalid_messages"),
        5: ("prompt_tokens", "missing_prompt"),
        6: ("request_id", "duplicate_request_id"),
        7: ("messages", "invalid_messages"),
        8: ("arrival_time", "invalid_time"),
        9: ("prompt", "invalid_prompt"),
        10: ("prompt_tokens", "negative_token_count"),
        13: (None, "unparseable_row"),
        14: (None, "unparseable_row"),
    }
    assert quarantined(tmp_path / "log.parquet")[14][2] == "{broken"


def test_a_mapped_parquet_table_ingests(tmp_path):
    table = pa.table(
        {
            "when": pa.array(
                [datetime(2024, 1, 1, 0, 0, 1), datetime(2024, 1, 1), datetime(2024, 1, 1, 0, 0, 2)], pa.timestamp("ms")
            ),
            "in": [10, 20, None],
            "out": [5.0, 6.0, 7.0],
            "route": ["a", "b", "c"],
            "conv": [1, 1, 2],
            "chat": [None, json.dumps([{"role": "user", "content": "x"}]), None],
            "ignored": ["x", "y", "z"],
        }
    )
    pq.write_table(table, tmp_path / "export.parquet")
    options = IngestOptions(
        column_map={
            "when": "arrival_time",
            "in": "prompt_tokens",
            "out": "completion_tokens",
            "route": "tag",
            "conv": "session_id",
            "chat": "messages",
        }
    )
    summary = ingest(tmp_path / "export.parquet", tmp_path / "log.parquet", options)
    assert (summary.format, summary.kept) == ("table", 2)
    log = read_log(tmp_path / "log.parquet").to_pylist()
    assert [
        (r["request_id"], r["prompt_tokens"], r["completion_tokens"], r["tag"], r["session_id"], r["api"]) for r in log
    ] == [
        ("table-2", 20, 6, "b", "1", "chat"),
        ("table-1", 10, 5, "a", "1", "chat"),
    ]
    assert quarantined(tmp_path / "log.parquet")[3][:2] == ("prompt_tokens", "missing_prompt")


def test_a_mapped_csv_table_with_quoted_json_and_line_breaks_ingests(tmp_path):
    rows = [
        ["ts", "rid", "msgs", "text", "blocks", "extra", "kind"],
        [
            "2024-01-01T00:00:00Z",
            "x1",
            json.dumps([{"role": "user", "content": 'a, "quoted"\nline'}]),
            "",
            "[1, 2]",
            '{"temperature": 0.5}',
            "",
        ],
        ["2024-01-01T00:00:01Z", "x2", "", "complete me", "", "", "completions"],
        ["2024-01-01T00:00:02Z", "x3", "[not json", "", "", "", ""],
        ["2024-01-01T00:00:03Z", "x1", "", "dup", "", "", ""],
        ["2024-01-01T00:00:04Z", "x5", "", "p", "", "[1]", ""],
        ["2024-01-01T00:00:05Z", "x6", "", "p", "", "", "embeddings"],
        ["2024-01-01T00:00:06Z", "x7", json.dumps([{"role": "user", "content": "m"}]), "", "", "", "completions"],
    ]
    src = tmp_path / "export.csv"
    with src.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    options = IngestOptions(
        column_map={
            "ts": "arrival_time",
            "rid": "request_id",
            "msgs": "messages",
            "text": "prompt",
            "blocks": "prefix_block_ids",
            "extra": "params",
            "kind": "api",
        }
    )
    summary = ingest(src, tmp_path / "log.parquet", options)
    assert summary.kept == 2
    log = read_log(tmp_path / "log.parquet").to_pylist()
    assert [r["request_id"] for r in log] == ["x1", "x2"]
    assert json.loads(log[0]["messages"])[0]["content"] == 'a, "quoted"\nline'
    assert (log[0]["api"], log[0]["prefix_block_ids"], json.loads(log[0]["params"])) == (
        "chat",
        [1, 2],
        {"temperature": 0.5},
    )
    assert (log[1]["api"], log[1]["prompt"], log[1]["messages"]) == ("completions", "complete me", None)
    assert {row: (field, reason) for row, (field, reason, _) in quarantined(tmp_path / "log.parquet").items()} == {
        3: ("messages", "invalid_messages"),
        4: ("request_id", "duplicate_request_id"),
        5: ("params", "invalid_params"),
        6: ("api", "invalid_api"),
        7: ("api", "invalid_api"),
    }


def test_a_table_without_an_arrival_time_column_is_refused(tmp_path):
    pq.write_table(pa.table({"t": [1], "prompt_tokens": [3]}), tmp_path / "export.parquet")
    assert main(["ingest", str(tmp_path / "export.parquet"), "-o", str(tmp_path / "log.parquet")]) == 1
    assert (
        main(
            ["ingest", str(tmp_path / "export.parquet"), "-o", str(tmp_path / "log.parquet"), "--map", "t=arrival_time"]
        )
        == 0
    )
    assert read_log(tmp_path / "log.parquet").column("arrival_time")[0].as_py() == datetime(
        1970, 1, 1, 0, 0, 1, tzinfo=UTC
    )


# ---- arrival order -----------------------------------------------------------------------------


def test_unsorted_input_comes_out_sorted_with_ties_in_source_order(tmp_path):
    rng = random.Random(7)
    seconds = [rng.randrange(600) for _ in range(6000)]  # many equal times
    lines = [AZURE_HEADER] + [
        f"2024-01-01 00:{s // 60:02d}:{s % 60:02d}.0000000,{row},1" for row, s in enumerate(seconds, start=1)
    ]
    src = tmp_path / "shuffled.csv"
    src.write_text("\n".join(lines) + "\n")
    summary = ingest(src, tmp_path / "log.parquet", run_rows=500)
    assert not summary.in_arrival_order and summary.sorted_runs == 12
    log = read_log(tmp_path / "log.parquet")
    expected = [row for _, row in sorted((s, row) for row, s in enumerate(seconds, start=1))]
    assert log.column("request_id").to_pylist() == [f"azure-{row}" for row in expected]
    assert log.column("prompt_tokens").to_pylist() == expected
    assert log.schema.equals(TRAFFIC_LOG_SCHEMA) and log.schema.metadata == TRAFFIC_LOG_SCHEMA.metadata


def test_the_run_merge_reads_each_run_in_several_chunks(tmp_path):
    rng = np.random.default_rng(3)
    count = 9000
    micros = rng.integers(0, 2_000_000, count)
    table = pa.table(
        {
            "request_id": [f"r{i}" for i in range(count)],
            "arrival_time": pa.array(micros, pa.timestamp("us", tz="UTC")),
            "api": ["chat"] * count,
            "prompt_tokens": pa.array(np.arange(count), pa.int32()),
        }
    )
    writer = TrafficLogWriter(tmp_path / "log.parquet", run_rows=3000, merge_memory_bytes=1)  # 1,024-row chunks
    for start in range(0, count, 700):
        piece = table.slice(start, 700)
        writer.write(
            pa.Table.from_arrays(
                [
                    piece.column(f.name) if f.name in piece.column_names else pa.nulls(piece.num_rows, f.type)
                    for f in TRAFFIC_LOG_SCHEMA
                ],
                schema=TRAFFIC_LOG_SCHEMA,
            )
        )
    result = writer.close()
    assert (result.rows, result.in_arrival_order, result.runs) == (count, False, 3)
    order = np.argsort(micros, kind="stable")
    assert read_log(tmp_path / "log.parquet").column("prompt_tokens").to_pylist() == order.tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.parquet"]  # no temporary file left


# ---- the CLI: exit codes and unreadable files ---------------------------------------------------


def test_strict_fails_on_quarantined_rows_and_nothing_kept_fails(tmp_path, capsys):
    lines = [AZURE_HEADER, "2023-11-16 18:20:00.0000000,1,2", "2023-11-16 18:20:01.0000000,-1,2"]
    src = tmp_path / "one_bad.csv"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "log.parquet"
    assert main(["ingest", str(src), "-o", str(out)]) == 0
    assert "1 rows quarantined" in capsys.readouterr().out
    assert main(["ingest", str(src), "-o", str(out), "--strict"]) == 1
    assert read_log(out).num_rows == 1 and quarantine_path(out).exists()

    src.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    assert main(["ingest", str(src), "-o", str(out)]) == 1
    assert "no row" in capsys.readouterr().out

    src.write_text("\n".join(lines[:2]) + "\n")
    assert main(["ingest", str(src), "-o", str(out), "--strict"]) == 0
    assert not quarantine_path(out).exists()  # the stale quarantine of the last ingest is gone


def _truncated_gzip(path: Path) -> None:
    data = gzip.compress(("\n".join([AZURE_HEADER] + ["2023-11-16 18:20:00.0000000,1,2"] * 50000)).encode())
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "name, make, extra",
    [
        ("corrupt.parquet", lambda p: p.write_bytes(b"PAR1" + b"\x00garbage" * 20 + b"PAR1"), []),
        ("truncated.csv.gz", _truncated_gzip, []),
        ("missing.csv", lambda p: None, []),
        ("empty.csv", lambda p: p.write_bytes(b""), []),
        ("binary.csv", lambda p: p.write_bytes(bytes(range(256)) * 4), ["--format", "azure"]),
        ("a_directory", lambda p: p.mkdir(), []),
    ],
)
def test_an_unreadable_source_gets_one_line_naming_it(tmp_path, capsys, name, make, extra):
    src = tmp_path / name
    make(src)
    assert main(["ingest", str(src), "-o", str(tmp_path / "log.parquet"), *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(src) in err and "Traceback" not in err
    assert not (tmp_path / "log.parquet").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_compressed_sources_are_read(tmp_path):
    src = tmp_path / "conv.csv.gz"
    src.write_bytes(gzip.compress(AZURE.read_bytes()))
    assert ingest(src, tmp_path / "log.parquet").kept == 19_366


def test_formats_are_detected_from_the_content(tmp_path):
    (tmp_path / "requests.log").write_text(json.dumps({"timestamp": 1, "request": {"prompt": "x"}}) + "\n")
    pq.write_table(pa.table({"arrival_time": [1]}), tmp_path / "table.bin")
    (tmp_path / "other.csv").write_text("arrival_time,prompt_tokens\n1,2\n")
    assert detect_format(AZURE) == "azure"
    assert detect_format(MOONCAKE) == "mooncake"
    assert detect_format(tmp_path / "requests.log") == "openai-jsonl"
    assert detect_format(tmp_path / "table.bin") == "table"
    assert detect_format(tmp_path / "other.csv") == "table"


def test_the_quarantine_file_has_its_schema(tmp_path):
    src = tmp_path / "bad.csv"
    src.write_text(f"{AZURE_HEADER}\nnope,1,1\n2023-11-16 18:20:00.0000000,1,1\n")
    ingest(src, tmp_path / "log.parquet")
    quarantine = pq.read_table(quarantine_path(tmp_path / "log.parquet"))
    assert quarantine.schema.equals(QUARANTINE_SCHEMA, check_metadata=True)
    assert quarantine.to_pylist()[0]["source_file"] == str(src) and "nope" in quarantine.to_pylist()[0]["detail"]


# ---- the CSV record reader ------------------------------------------------------------------------

FIELD_TEXT = st.text(alphabet=st.sampled_from(list("ab ,\"\n\r'é;1")), max_size=12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(FIELD_TEXT, FIELD_TEXT, FIELD_TEXT), max_size=40), st.integers(8, 200))
def test_the_csv_record_reader_returns_every_record_with_its_number(tmp_path_factory, records, block_bytes) -> None:
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "c"])
        writer.writerows(records)
    reader = CsvRecordReader(path, block_bytes=block_bytes)
    got: dict[int, list] = {}
    for block in reader.blocks():
        assert not block.unparsed
        columns = [block.columns[name].to_pylist() for name in ("a", "b", "c")]
        for index, row in enumerate(block.source_rows.tolist()):
            got[row] = [column[index] for column in columns]
    expected = {row: [value or None for value in record] for row, record in enumerate(records, start=1) if any(record)}
    # csv.writer writes a record of three empty fields as ",,", which is a record of nulls
    assert got == expected | {row: [None, None, None] for row, record in enumerate(records, start=1) if not any(record)}


# ---- validators (property-based) --------------------------------------------------------------------

_INTEGER_TEXT = re.compile(r"(-?[0-9]+)(\.0+)?")


@given(
    st.lists(
        st.one_of(
            st.text(max_size=8),
            st.integers(-(2**40), 2**40).map(str),
            st.integers(0, 99).map(lambda n: f" {n}\t"),
            st.integers(0, 2**33).map(lambda n: f"{n}.0"),
            st.sampled_from(["", " ", "\t", "7.", "7.5", "7.00", "-0.0"]),
        ),
        max_size=30,
    ),
    st.booleans(),
)
def test_token_count_text_accepts_exactly_the_non_negative_int32_integers(texts, required):
    problems = RowProblems(len(texts))
    counts = token_counts(pa.array(texts, pa.string()), "prompt_tokens", problems, required=required).to_pylist()
    reasons = dict(problems.items())
    for index, text in enumerate(texts):
        stripped = text.strip(" \t\n\r\x0b\x0c")
        match = _INTEGER_TEXT.fullmatch(stripped)
        value = int(match.group(1)) if match else None
        if value is not None and 0 <= value <= INT32_MAX:
            assert counts[index] == value and not problems.has_problem(index)
        elif not stripped:  # blank: absent, a missing value where the count is required
            assert counts[index] is None
            assert (reasons[index].reason if index in reasons else None) == ("missing_value" if required else None)
        else:
            assert counts[index] is None and problems.has_problem(index)
            assert reasons[index].reason != "missing_value"


@given(
    st.lists(
        st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 2**33).map(float)),
        max_size=30,
    )
)
def test_token_count_numbers_accept_exactly_the_integral_values_in_range(values):
    problems = RowProblems(len(values))
    counts = token_counts(pa.array(values, pa.float64()), "completion_tokens", problems, required=False).to_pylist()
    for index, value in enumerate(values):
        valid = (
            value is not None
            and value == value
            and abs(value) != float("inf")
            and value.is_integer()
            and 0 <= value <= INT32_MAX
        )
        assert counts[index] == (int(value) if valid else None)
        assert problems.has_problem(index) == (value is not None and not valid)


@given(st.lists(st.integers(-(2**62), 2**62), max_size=20))
def test_token_count_integers_accept_exactly_the_int32_range(values):
    problems = RowProblems(len(values))
    counts = token_counts(pa.array(values, pa.int64()), "prompt_tokens", problems, required=True).to_pylist()
    assert counts == [value if 0 <= value <= INT32_MAX else None for value in values]


MOMENTS = st.datetimes(min_value=datetime(1974, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))
OFFSETS = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))


@given(MOMENTS, OFFSETS)
def test_iso_times_round_trip_in_every_written_form(moment, offset):
    forms = [
        moment.isoformat(),
        moment.isoformat().replace("+00:00", "Z"),
        moment.replace(tzinfo=None).isoformat(sep=" "),
        moment.astimezone(offset).isoformat(),
        f"  {moment.replace(tzinfo=None).isoformat()}  ",
    ]
    problems = RowProblems(len(forms))
    parsed = arrival_times(pa.array(forms), "arrival_time", problems).to_pylist()
    assert not problems and parsed == [moment] * len(forms)


@given(MOMENTS)
def test_epoch_times_round_trip_in_seconds_and_milliseconds(moment):
    seconds = moment.timestamp()
    millis = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    problems = RowProblems(3)
    parsed = arrival_times(pa.array([seconds, float(millis), None]), "arrival_time", problems).to_pylist()
    assert abs(parsed[0] - moment) <= timedelta(microseconds=1)
    assert parsed[1] == moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    assert parsed[2] is None and problems.has_problem(2) and not problems.has_problem(0)
    text = arrival_times(pa.array([repr(seconds), str(millis)]), "arrival_time", RowProblems(2)).to_pylist()
    assert abs(text[0] - moment) <= timedelta(microseconds=1) and text[1] == parsed[1]


@given(st.text(max_size=20))
def test_arbitrary_text_is_a_time_only_when_python_also_reads_one(text):
    problems = RowProblems(1)
    parsed = arrival_times(pa.array([text]), "arrival_time", problems).to_pylist()[0]
    if parsed is None:
        assert problems.has_problem(0)
        return
    stripped = text.strip(" \t\n\r\x0b\x0c")
    try:
        float(stripped)
        return  # a number: epoch seconds or milliseconds
    except ValueError:
        pass
    python = datetime.fromisoformat(stripped.replace("Z", "+00:00").replace("z", "+00:00"))
    python = python if python.tzinfo else python.replace(tzinfo=UTC)
    assert abs(python - parsed) < timedelta(microseconds=1)


ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool"])
CONTENT = st.one_of(
    st.text(max_size=10),
    st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=5)}), max_size=3),
)


@given(st.lists(st.fixed_dictionaries({"role": ROLES, "content": CONTENT}), min_size=1, max_size=5))
def test_openai_shaped_messages_are_accepted(messages):
    assert messages_problem(messages) is None
    assert messages_problem(json.loads(json.dumps(messages))) is None


@given(
    st.lists(st.fixed_dictionaries({"role": ROLES, "content": CONTENT}), min_size=1, max_size=5),
    st.integers(0, 4),
    st.sampled_from(
        [
            {"role": "robot", "content": "x"},
            {"content": "x"},
            {"role": "user", "content": 5},
            {"role": "user"},
            {"role": "user", "content": [{"text": "no type"}]},
            "text",
            None,
        ]
    ),
)
def test_a_message_out_of_shape_is_refused(messages, position, bad):
    messages.insert(min(position, len(messages)), bad)
    assert messages_problem(messages) is not None


@given(st.lists(st.one_of(st.none(), st.integers(-(2**70), 2**70).map(str), st.text(max_size=4)), max_size=40))
def test_casting_locates_exactly_the_values_that_fail(texts):
    cast, failed = cast_locating_failures(pa.array(texts, pa.string()), pa.int64())

    def casts(text):
        try:
            pa.array([text]).cast(pa.int64())
            return True
        except (pa.ArrowInvalid, OverflowError):
            return False

    expected_failures = [i for i, text in enumerate(texts) if text is not None and not casts(text)]
    assert failed.tolist() == expected_failures
    assert cast.to_pylist() == [
        None if text is None or i in expected_failures else int(text) for i, text in enumerate(texts)
    ]
