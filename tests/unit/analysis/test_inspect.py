"""`shadowreplay inspect` (analysis/summary/traffic_stats.py) against figures computed independently: the
real traces, and small logs built so that each definition has one right answer."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shadowreplay.cli import main
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA
from tests.support.traces import AZURE_CONV as AZURE
from tests.support.traces import MOONCAKE

SECONDS_PER_MONTH = 30 * 86_400


def inspect_json(path: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["inspect", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def write_log(path: Path, rows: list[dict]) -> Path:
    """A traffic log from partial rows (request_id and api filled in)."""
    full = [{"request_id": f"r{i}", "api": "chat", **row} for i, row in enumerate(rows)]
    pq.write_table(pa.Table.from_pylist(full, schema=TRAFFIC_LOG_SCHEMA), path)
    return path


def at(seconds: float, origin: datetime = datetime(2024, 1, 1, 12, tzinfo=UTC)) -> datetime:
    return origin + timedelta(seconds=seconds)


def test_the_azure_trace_figures_match_an_independent_computation(tmp_path, capsys):
    log = tmp_path / "conv.parquet"
    assert main(["ingest", str(AZURE), "-o", str(log)]) == 0
    stats = inspect_json(log, capsys)
    rows = list(csv.reader(AZURE.read_text().splitlines()[1:]))
    times = [datetime.strptime(r[0][:26], "%Y-%m-%d %H:%M:%S.%f") for r in rows]
    prompt = np.array([int(r[1]) for r in rows])
    output = np.array([int(r[2]) for r in rows])
    span = (times[-1] - times[0]).total_seconds()

    assert stats["rows"] == 19_366
    assert round(stats["peak_to_average_1s"], 2) == 2.89 and round(stats["peak_to_average_60s"], 2) == 1.53
    assert stats["span_s"] == pytest.approx(span)
    assert stats["rate_rps"] == pytest.approx(len(rows) / span)
    for name, values in (("prompt_tokens", prompt), ("completion_tokens", output)):
        for p in (50, 90, 99):
            assert stats[name][f"p{p}"] == pytest.approx(np.percentile(values, p))  # linear interpolation
        assert stats[name]["max"] == values.max()
    assert stats["tokens_per_s"] == pytest.approx((prompt.sum() + output.sum()) / span)
    assert stats["monthly_tokens"] == pytest.approx((prompt.sum() + output.sum()) / span * SECONDS_PER_MONTH)
    assert stats["prefix_reuse_share"] is None and stats["prefix_block_reuse_share"] is None and stats["tags"] == {}


def test_prefix_reuse_on_the_mooncake_trace_matches_a_direct_count(tmp_path, capsys) -> None:
    log = tmp_path / "mc.parquet"
    assert main(["ingest", str(MOONCAKE), "-o", str(log)]) == 0
    seen: set[int] = set()
    reusing = blocks_total = blocks_reused = 0
    for line in MOONCAKE.read_text().splitlines():  # the trace is in arrival order
        blocks = json.loads(line)["hash_ids"]
        reusing += any(block in seen for block in blocks)
        blocks_total += len(blocks)
        blocks_reused += sum(block in seen for block in blocks)
        seen.update(blocks)
    stats = inspect_json(log, capsys)
    assert stats["prefix_reuse_share"] == pytest.approx(reusing / 3_993)
    assert stats["prefix_block_reuse_share"] == pytest.approx(blocks_reused / blocks_total)
    assert round(stats["prefix_reuse_share"], 3) == 0.446 and round(stats["prefix_block_reuse_share"], 3) == 0.640
    assert stats["prefix_reuse"] == {
        "requests_share": stats["prefix_reuse_share"],
        "requests_reusing": reusing,
        "requests": 3_993,
        "blocks_share": stats["prefix_block_reuse_share"],
        "blocks_reused": blocks_reused,
        "blocks": blocks_total,
    }


def test_peak_windows_are_aligned_at_the_first_arrival(tmp_path, capsys):
    # First arrival at .7 s past a whole second: windows from it hold 3, 2, 0, 1 arrivals; windows on
    # whole seconds would hold 1, 4, 0, 1.
    origin = datetime(2024, 1, 1, 12, 0, 0, 700_000, tzinfo=UTC)
    offsets = [0, 0.5, 0.99, 1.0, 1.2, 3.0]
    log = write_log(tmp_path / "log.parquet", [{"arrival_time": at(s, origin), "prompt_tokens": 1} for s in offsets])
    stats = inspect_json(log, capsys)
    assert stats["span_s"] == pytest.approx(3.0)
    assert stats["peak_to_average_1s"] == pytest.approx(3 / (6 * 1 / 3.0))
    assert stats["peak_to_average_60s"] is None  # a 60 s window on a 3 s log: no peak-to-average


def test_a_window_longer_than_the_span_has_no_peak_to_average(tmp_path, capsys):
    # 47.8 s of arrivals: one 60 s window holds them all, and rows x 60 / span would read 0.80.
    offsets = [i * 47.8 / 99 for i in range(100)]
    log = write_log(tmp_path / "log.parquet", [{"arrival_time": at(s), "prompt_tokens": 1} for s in offsets])
    stats = inspect_json(log, capsys)
    assert stats["span_s"] == pytest.approx(47.8)
    assert stats["peak_to_average_60s"] is None and stats["peak_to_average_1s"] is not None
    assert "longer than the span" in stats["definitions"]
    assert main(["inspect", str(log)]) == 0
    table = capsys.readouterr().out
    line = next(line for line in table.splitlines() if "60 s windows" in line)
    assert "n/a (window longer than the log's span)" in line and "0.80" not in table
    # 60 s of arrivals or more: the ratio is there again
    longer = write_log(tmp_path / "long.parquet", [{"arrival_time": at(s * 2), "prompt_tokens": 1} for s in offsets])
    assert inspect_json(longer, capsys)["peak_to_average_60s"] == pytest.approx(1.0, abs=0.25)


def test_prefix_reuse_counts_blocks_seen_in_earlier_requests_only(tmp_path, capsys):
    blocks = [[1, 2], [3], [2, 4], None, [5, 5], [4]]  # reusing: [2, 4] (2) and [4] (4); [5, 5] repeats only itself
    log = write_log(
        tmp_path / "log.parquet",
        [{"arrival_time": at(i), "prefix_block_ids": b, "prompt_tokens": 8} for i, b in enumerate(blocks)],
    )
    stats = inspect_json(log, capsys)
    assert stats["prefix_reuse_share"] == pytest.approx(2 / 6)
    # blocks: 1 2 | 3 | 2* 4 | 5 5 | 4* -> 2 of 8 block ids appeared in an earlier request
    assert stats["prefix_block_reuse_share"] == pytest.approx(2 / 8)
    assert stats["prefix_reuse"]["blocks"] == 8 and stats["prefix_reuse"]["blocks_reused"] == 2


def test_a_shared_first_block_reads_100_percent_of_requests_but_not_of_blocks(tmp_path, capsys):
    # Every request starts with block 0 (a common system prompt), then 9 blocks of its own: each request
    # after the first reuses a block, yet only 1 block in 10 was seen before.
    blocks = [[0, *range(10 * i + 1, 10 * i + 10)] for i in range(20)]
    log = write_log(
        tmp_path / "log.parquet",
        [{"arrival_time": at(i), "prefix_block_ids": b, "prompt_tokens": 5120} for i, b in enumerate(blocks)],
    )
    stats = inspect_json(log, capsys)
    assert stats["prefix_reuse_share"] == pytest.approx(19 / 20)
    assert stats["prefix_block_reuse_share"] == pytest.approx(19 / 200)
    assert main(["inspect", str(log)]) == 0
    out = capsys.readouterr().out
    assert "95.0% (19 of 20 requests)" in out and "9.5% (19 of 200 blocks)" in out
    flat = " ".join(out.split())
    assert "appeared in an earlier request / all block ids" in flat
    assert "seen in an earlier request / all requests" in flat


def test_tags_get_their_own_breakdown(tmp_path, capsys):
    rows = [
        {"arrival_time": at(0), "tag": "chat", "prompt_tokens": 10, "completion_tokens": 1},
        {"arrival_time": at(1), "tag": "code", "prompt_tokens": 100, "completion_tokens": 5},
        {"arrival_time": at(2), "tag": "chat", "prompt_tokens": 30, "completion_tokens": 3},
        {"arrival_time": at(4), "tag": None, "prompt_tokens": 50, "completion_tokens": 2},
    ]
    stats = inspect_json(write_log(tmp_path / "log.parquet", rows), capsys)
    assert set(stats["tags"]) == {"chat", "code"}
    chat = stats["tags"]["chat"]
    assert (
        chat["rows"] == 2 and chat["prompt_tokens"]["p50"] == pytest.approx(20) and chat["prompt_tokens"]["max"] == 30
    )
    assert stats["tags"]["code"]["rows"] == 1
    assert stats["prompt_tokens"]["p90"] == pytest.approx(np.percentile([10, 100, 30, 50], 90))
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "log.parquet")]) == 0
    table = capsys.readouterr().out
    assert "chat" in table and "code" in table and "peak-to-average" in table


def test_a_single_request_has_no_rate_but_still_reports(tmp_path, capsys):
    stats = inspect_json(
        write_log(tmp_path / "log.parquet", [{"arrival_time": at(0), "prompt_tokens": 5, "completion_tokens": 2}]),
        capsys,
    )
    assert stats["rows"] == 1 and stats["rate_rps"] is None and stats["peak_to_average_1s"] is None
    assert stats["monthly_tokens"] is None and stats["prompt_tokens"]["max"] == 5


@pytest.mark.parametrize(
    "make", [lambda p: pq.write_table(pa.table({"x": [1]}), p), lambda p: p.write_bytes(b"not parquet"), lambda p: None]
)
def test_a_file_that_is_not_a_traffic_log_gets_one_line(tmp_path, capsys, make):
    path = tmp_path / "other.parquet"
    make(path)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "Traceback" not in err
