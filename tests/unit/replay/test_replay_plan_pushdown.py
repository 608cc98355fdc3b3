"""select_rows with --window / --limit reads only the rows it needs (row-group statistics on
arrival_time) and selects exactly what a read of the whole log selected."""

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowreplay.replay.run.plan import PlanError, Window, arrival_offsets_s, select_rows
from shadowreplay.replay.schemas.contract import stamp
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA, TrafficLogError, arrival_time_ranges

T0_US = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z


def make_log(path: Path, offsets_us, row_group_size: int, statistics: bool = True, schema=TRAFFIC_LOG_SCHEMA) -> Path:
    """A token-count log (no text), rows in the given order, `row_group_size` rows per row group."""
    n = len(offsets_us)
    micros = pa.array(np.asarray(offsets_us, dtype=np.int64) + T0_US, pa.int64())
    columns = {
        "request_id": pa.array([f"r{i}" for i in range(n)], pa.string()),
        "arrival_time": micros.cast(pa.timestamp("us", tz="UTC")),
        "session_id": pa.array([f"s{i % 3}" if i % 2 else None for i in range(n)], pa.string()),
        "api": pa.array(["chat"] * n, pa.string()),
        "prompt_tokens": pa.array(np.arange(n) % 7 + 1, pa.int32()),
        "completion_tokens": pa.array(np.arange(n) % 5, pa.int32()),
    }
    arrays = [columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in schema]
    table = pa.Table.from_arrays(arrays, schema=schema)
    pq.write_table(table, path, row_group_size=row_group_size, write_statistics=statistics)
    return path


def whole_read_selection(path: Path, window: Window | None, limit: int | None) -> pa.Table:
    """select_rows as it was before the pushdown: the whole log read, sorted, filtered, sliced."""
    table = pq.read_table(path).sort_by([("arrival_time", "ascending")])
    if window is not None:
        offsets = arrival_offsets_s(table)
        keep = offsets >= window.start_s
        if window.end_s is not None:
            keep &= offsets < window.end_s
        table = table.filter(pa.array(keep))
    if limit is not None:
        table = table.slice(0, limit)
    return table


def assert_same_selection(path: Path, window: Window | None, limit: int | None) -> None:
    expected = whole_read_selection(path, window, limit)
    if expected.num_rows == 0:
        with pytest.raises(PlanError, match="no rows"):
            select_rows(path, window, limit)
        return
    got = select_rows(path, window, limit)
    assert got.column("request_id").to_pylist() == expected.column("request_id").to_pylist()
    assert got.equals(expected)


# Offsets in whole seconds (many ties, windows landing exactly on rows) or in microseconds.
offsets_strategy = st.one_of(
    st.lists(st.integers(0, 30).map(lambda s: s * 1_000_000), min_size=1, max_size=80),
    st.lists(st.integers(0, 30_000_000), min_size=1, max_size=80),
)


@settings(max_examples=150, deadline=None)
@given(
    offsets=offsets_strategy,
    sort=st.booleans(),
    row_group_size=st.integers(1, 17),
    statistics=st.booleans(),
    start=st.one_of(st.none(), st.integers(0, 32), st.floats(0, 32, allow_nan=False)),
    length=st.one_of(st.none(), st.integers(1, 32), st.floats(1e-6, 32, allow_nan=False)),
    limit=st.one_of(st.none(), st.integers(1, 90)),
)
def test_pushdown_selects_exactly_what_the_whole_read_did(
    offsets, sort, row_group_size, statistics, start, length, limit
):
    if sort:
        offsets = sorted(offsets)
    window = None
    if start is not None or length is not None:
        start_s = float(start or 0)
        window = Window(start_s, None if length is None else start_s + float(length))
    with tempfile.TemporaryDirectory() as tmp:
        log = make_log(Path(tmp) / "log.parquet", offsets, row_group_size, statistics)
        assert_same_selection(log, window, limit)


@pytest.mark.parametrize("text", ["0..1", "1..2", "..2", "2..", "3..5", "4.999999..5.000001", "5..", "5.000001.."])
@pytest.mark.parametrize("limit", [None, 1, 2, 3, 100])
def test_windows_at_the_edges_with_ties_and_limits(tmp_path, text, limit):
    # Unsorted, ties inside a row group and across row groups; rows exactly on the window's edges.
    offsets = [s * 1_000_000 for s in (3, 1, 1, 2, 5, 4, 2, 0, 5, 3, 1, 4, 4, 2)]
    log = make_log(tmp_path / "log.parquet", offsets, row_group_size=3)
    assert_same_selection(log, Window.parse(text), limit)
    assert_same_selection(log, None, limit)


def test_a_log_whose_first_arrival_is_not_in_the_first_row_group(tmp_path):
    log = make_log(tmp_path / "log.parquet", [9_000_000, 8_000_000, 7_500_000, 0, 1_000_000, 2], row_group_size=2)
    assert_same_selection(log, Window.parse("..1.5"), None)
    assert select_rows(log, Window.parse("..1")).column("request_id").to_pylist() == ["r3", "r5"]


def test_limit_zero_or_below_leaves_nothing(tmp_path):
    log = make_log(tmp_path / "log.parquet", [0, 1, 2], row_group_size=2)
    for limit in (0, -1):
        with pytest.raises(PlanError, match="no rows"):
            select_rows(log, None, limit)


class ReadCounter:
    """Counts what select_rows reads from the Parquet file: whole-file reads and row-group reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.file_reads: list[list[str] | None] = []
        self.group_reads: list[tuple[int, tuple[str, ...] | None]] = []
        read, read_row_group = pq.ParquetFile.read, pq.ParquetFile.read_row_group

        def counted_read(pf, columns=None, **kwargs):
            self.file_reads.append(columns)
            return read(pf, columns=columns, **kwargs)

        def counted_read_row_group(pf, i, columns=None, **kwargs):
            self.group_reads.append((i, tuple(columns) if columns is not None else None))
            return read_row_group(pf, i, columns=columns, **kwargs)

        monkeypatch.setattr(pq.ParquetFile, "read", counted_read)
        monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted_read_row_group)

    def whole_groups(self) -> list[int]:
        return [g for g, columns in self.group_reads if columns is None]

    def arrival_groups(self) -> list[int]:
        return [g for g, columns in self.group_reads if columns == ("arrival_time",)]


def test_a_window_reads_only_the_row_groups_that_hold_its_rows(tmp_path, monkeypatch):
    # 1000 rows, one every 10 ms, 100 per row group: 2.5..3.5 s lies in row groups 2 and 3.
    log = make_log(tmp_path / "log.parquet", np.arange(1000) * 10_000, row_group_size=100)
    assert pq.ParquetFile(log).metadata.num_row_groups == 10
    counter = ReadCounter(monkeypatch)
    rows = select_rows(log, Window.parse("2.5..3.5"))
    assert rows.num_rows == 100
    assert counter.file_reads == []  # the minimum arrival came from the statistics
    assert sorted(counter.arrival_groups()) == [2, 3]
    assert sorted(counter.whole_groups()) == [2, 3]
    assert sum(pq.ParquetFile(log).metadata.row_group(g).num_rows for g in counter.whole_groups()) == 200


def test_a_limit_reads_only_the_first_row_groups(tmp_path, monkeypatch):
    log = make_log(tmp_path / "log.parquet", np.arange(1000) * 10_000, row_group_size=100)
    counter = ReadCounter(monkeypatch)
    assert select_rows(log, None, limit=150).num_rows == 150
    assert counter.file_reads == []
    assert sorted(counter.whole_groups()) == [0, 1]
    assert sorted(counter.arrival_groups()) == [0, 1]


def test_a_limit_on_an_unsorted_log_skips_groups_that_start_after_its_last_row(tmp_path, monkeypatch):
    # Row groups hold 10..19 s, 0..9 s, 20..29 s (sorted within each): --limit 5 needs group 1 only.
    offsets = [s * 1_000_000 for s in [*range(10, 20), *range(10), *range(20, 30)]]
    log = make_log(tmp_path / "log.parquet", offsets, row_group_size=10)
    counter = ReadCounter(monkeypatch)
    rows = select_rows(log, None, limit=5)
    assert rows.column("request_id").to_pylist() == ["r10", "r11", "r12", "r13", "r14"]
    assert counter.arrival_groups() == [1] and counter.whole_groups() == [1]


def test_without_statistics_arrival_time_alone_is_read_once(tmp_path, monkeypatch):
    log = make_log(tmp_path / "log.parquet", np.arange(1000) * 10_000, row_group_size=100, statistics=False)
    assert arrival_time_ranges(pq.ParquetFile(log)) is None
    counter = ReadCounter(monkeypatch)
    assert select_rows(log, Window.parse("2.5..3.5")).num_rows == 100
    assert counter.file_reads == [["arrival_time"]]
    assert sorted(counter.whole_groups()) == [2, 3]


def test_ranges_come_from_the_statistics(tmp_path):
    log = make_log(tmp_path / "log.parquet", [5, 3, 9, 1, 7], row_group_size=2)
    ranges = [(T0_US + 3, T0_US + 5), (T0_US + 1, T0_US + 9), (T0_US + 7, T0_US + 7)]
    assert arrival_time_ranges(pq.ParquetFile(log)) == ranges


def test_the_schema_version_is_still_checked_before_a_window_is_read(tmp_path):
    schema = TRAFFIC_LOG_SCHEMA.with_metadata(stamp("traffic_log", 99))
    log = make_log(tmp_path / "log.parquet", [0, 1, 2], row_group_size=2, schema=schema)
    with pytest.raises(TrafficLogError, match="schema_version 99"):
        select_rows(log, Window.parse("..1"), limit=1)
