"""A capture's directory of shards is one traffic log: every reader (replay's selection, inspect's
statistics, capacity's demand and arrivals) gives what it gives for the same rows in one file, parts
covered by a merged shard are never read twice, and columns beyond the contract survive."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shadowreplay.analysis.capacity.demand import demand
from shadowreplay.analysis.summary.traffic_stats import traffic_stats
from shadowreplay.loadgen.volume import arrivals_at_volume
from shadowreplay.replay.run.plan import Window, select_rows
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA, TrafficLogError, log_files, open_traffic_log
from tests.unit.replay.test_replay_plan_pushdown import make_log

EXTRA = pa.schema([*TRAFFIC_LOG_SCHEMA, pa.field("prod_ttft_ms", pa.float64())], metadata=TRAFFIC_LOG_SCHEMA.metadata)


@pytest.fixture
def one_file_and_directory(tmp_path):
    """The same 300 rows (arrivals out of order across shards) as one file and as three shards."""
    rng = np.random.default_rng(7)
    offsets = np.sort(rng.integers(0, 60_000_000, 300))
    whole = make_log(tmp_path / "whole.parquet", offsets, row_group_size=40)
    directory = tmp_path / "capture"
    directory.mkdir()
    table = pq.read_table(whole)
    for name, start, stop in (("capture-a", 0, 120), ("capture-b", 120, 250), ("capture-c", 250, 300)):
        pq.write_table(table.slice(start, stop - start), directory / f"{name}.parquet", row_group_size=40)
    return whole, directory


@pytest.mark.parametrize(
    ("window", "limit"), [(None, None), (Window(10.0, 30.0), None), (None, 57), (Window(5.0, None), 100)]
)
def test_a_directory_selects_what_the_one_file_selects(one_file_and_directory, window, limit):
    whole, directory = one_file_and_directory
    expected = select_rows(whole, window, limit)
    got = select_rows(directory, window, limit)
    assert got.column("request_id").to_pylist() == expected.column("request_id").to_pylist()


def test_inspect_and_capacity_read_a_directory_as_the_one_file(one_file_and_directory):
    whole, directory = one_file_and_directory
    expected, got = traffic_stats(whole), traffic_stats(directory)
    for key in ("rows", "span_s", "rate_rps", "prompt_tokens", "completion_tokens", "peak_to_average_1s"):
        assert got[key] == expected[key], key
    assert demand(directory, 5.0).json_dict() | {"log": None} == demand(whole, 5.0).json_dict() | {"log": None}
    np.testing.assert_array_equal(arrivals_at_volume(directory, 1), arrivals_at_volume(whole, 1))


def test_parts_a_merged_shard_covers_are_not_read(tmp_path):
    """A crash between a rotation's merge and the deletion of its parts leaves both: rows once."""
    directory = tmp_path / "capture"
    directory.mkdir()
    make_log(directory / "capture-20261203T100000.000Z-00000.parquet", [0, 1], row_group_size=10)
    make_log(directory / "capture-20261203T100000.000Z-00001.parquet", [2, 3], row_group_size=10)
    make_log(directory / "capture-20261203T100000.000Z.parquet", [0, 1, 2, 3], row_group_size=10)
    make_log(directory / "capture-20261203T101000.000Z-00000.parquet", [5], row_group_size=10)  # not merged yet
    (directory / ".capture-20261203T101000.000Z-00001.parquet.tmp").write_bytes(b"half a file")
    names = [p.name for p in log_files(directory)]
    assert names == ["capture-20261203T100000.000Z.parquet", "capture-20261203T101000.000Z-00000.parquet"]
    assert open_traffic_log(directory).num_rows == 5


def test_columns_beyond_the_contract_are_kept_and_null_where_a_shard_lacks_them(tmp_path):
    directory = tmp_path / "capture"
    directory.mkdir()
    make_log(directory / "a.parquet", [0, 1], row_group_size=10)
    extra = make_log(tmp_path / "b.parquet", [2, 3], row_group_size=10, schema=EXTRA)
    table = pq.read_table(extra)
    table = table.set_column(table.schema.get_field_index("prod_ttft_ms"), "prod_ttft_ms", pa.array([12.5, 30.0]))
    pq.write_table(table, directory / "b.parquet")
    log = open_traffic_log(directory)
    assert log.read(["request_id", "prod_ttft_ms"]).column("prod_ttft_ms").to_pylist() == [None, None, 12.5, 30.0]
    assert select_rows(directory).column("prod_ttft_ms").to_pylist() == [None, None, 12.5, 30.0]
    assert log.read_row_group(0).column_names == log.read_row_group(1).column_names


def test_shards_that_disagree_on_a_contract_type_are_named(tmp_path):
    directory = tmp_path / "capture"
    directory.mkdir()
    make_log(directory / "a.parquet", [0], row_group_size=10)
    other = pa.schema(
        [f.with_type(pa.int64()) if f.name == "prompt_tokens" else f for f in TRAFFIC_LOG_SCHEMA],
        metadata=TRAFFIC_LOG_SCHEMA.metadata,
    )
    make_log(directory / "b.parquet", [1], row_group_size=10, schema=other)
    with pytest.raises(TrafficLogError, match=r"b\.parquet: column prompt_tokens is int64, int32 in a\.parquet"):
        open_traffic_log(directory)


def test_a_directory_without_shards_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrafficLogError, match="empty: a directory without committed Parquet shards"):
        select_rows(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.parquet").write_text("not parquet")
    with pytest.raises(TrafficLogError, match=r"x\.parquet: cannot read as Parquet"):
        traffic_stats(tmp_path / "bad")
