"""scripts/bench_startup.py: its generated logs are valid traffic logs in several row groups whose
arrivals the small log shares, so the same window selects the same arrivals from both."""

from __future__ import annotations

import sys

import pyarrow.parquet as pq

from shadowreplay.replay.run.plan import Window, select_rows
from shadowreplay.replay.schemas.traffic_log import open_traffic_log
from tests.support.paths import SCRIPTS

sys.path.insert(0, str(SCRIPTS))

from bench_startup import ROW_GROUP, log_span_s, make_log  # noqa: E402


def test_the_logs_are_traffic_logs_sharing_their_arrivals(tmp_path):
    large, small = tmp_path / "large.parquet", tmp_path / "small.parquet"
    span = make_log(large, 2 * ROW_GROUP + 10)
    make_log(small, 1_000)
    log = open_traffic_log(large)  # the schema check passes
    assert log.num_rows == 2 * ROW_GROUP + 10
    assert log.num_row_groups == 3
    assert log_span_s(large) == span
    times = pq.read_table(large, columns=["arrival_time"]).column("arrival_time")
    assert times.to_pylist() == sorted(times.to_pylist())
    window = Window.parse("60..80")
    picked = [select_rows(log, window).column("arrival_time").to_pylist() for log in (large, small)]
    assert picked[0] == picked[1] and 60 < len(picked[0]) < 180
