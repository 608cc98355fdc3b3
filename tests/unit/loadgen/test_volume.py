"""Traffic volume on the log's own timeline (loadgen/volume.py): what a volume means as a factor of the
selected rows, thinning that keeps conversations whole and nests, superposition that keeps the span."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from shadowreplay.analysis.capacity.traffic_volume import TrafficVolume
from shadowreplay.errors import UserError
from shadowreplay.loadgen.volume import log_volume, on_timeline
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA
from tests.support.traffic_logs import log_row

N = 400


def _rows(n: int = N, gap_s: float = 0.5) -> tuple[pa.Table, np.ndarray]:
    rows = [log_row(i, gap_s * i, session=f"s{i // 4}" if i % 8 < 4 else None) for i in range(n)]
    for row in rows:
        row["messages"] = None  # synthesized prompts
    table = pa.Table.from_pylist(rows, schema=TRAFFIC_LOG_SCHEMA)
    return table, np.arange(n) * gap_s


def test_a_volume_is_a_factor_of_the_selected_rows_own():
    rows, offsets = _rows()  # 400 requests over 199.5 s: 2 req/s; 11 tokens each (5 prompt + 6 output)
    log = log_volume(rows, offsets)
    assert TrafficVolume.parse("2x").factor(log) == 2.0
    assert TrafficVolume.parse("6rps").factor(log) == pytest.approx(3.0)
    monthly = N * 11 / 199.5 * 30 * 24 * 3600
    assert TrafficVolume.parse(f"{monthly / 1e6 / 2}M-tokens/month").factor(log) == pytest.approx(0.5)
    output_monthly = N * 6 / 199.5 * 30 * 24 * 3600
    assert TrafficVolume.parse(f"{output_monthly / 1e3}k-output-tokens/month").factor(
        log_volume(rows, offsets)
    ) == pytest.approx(1)


@pytest.mark.parametrize("spec", ["2", "x", "1Mx", "3 rps", "300M-tokens", "-1x", "0rps"])
def test_a_volume_that_says_no_amount_is_refused(spec):
    with pytest.raises(UserError, match="--volume"):
        TrafficVolume.parse(spec)


def test_thinning_keeps_whole_conversations_and_a_lower_volume_is_a_subset():
    rows, offsets = _rows()
    kept = {}
    for factor in (0.2, 0.5, 0.8):
        thinned, times, scaling = on_timeline(rows, offsets, factor)
        assert scaling.method == "thinned" and scaling.requests == thinned.num_rows
        ids = thinned.column("request_id").to_pylist()
        assert abs(len(ids) - factor * N) < 4 * np.sqrt(N * factor * (1 - factor)) + 8  # about factor x N
        sessions = [s for s in thinned.column("session_id").to_pylist() if s is not None]
        assert all(sessions.count(s) == 4 for s in set(sessions))  # a conversation stays or goes whole
        assert times.tolist() == sorted(times.tolist()) and set(times.tolist()) <= set(offsets.tolist())
        kept[factor] = set(ids)
    assert kept[0.2] <= kept[0.5] <= kept[0.8]


def test_superposition_keeps_the_timeline_and_makes_every_copy_its_own_request():
    rows, offsets = _rows()
    scaled, times, scaling = on_timeline(rows, offsets, 3.0)
    assert scaling.method == "superposed" and scaling.copies == 3 and scaled.num_rows == 3 * N
    assert scaling.copy_spread_s == 1.0  # ten mean gaps (5 s), at most 1 s
    ids = scaled.column("request_id").to_pylist()
    assert len(set(ids)) == 3 * N and {"req-000", "req-000~1", "req-000~2"} <= set(ids)
    assert offsets.max() <= times.max() - times.min() < offsets.max() + 1.0  # the log's span, not shorter
    assert np.all(np.diff(times) >= 0)
    at = dict(zip(ids, times.tolist(), strict=True))
    shifts = {copy: [at[f"req-{i:03d}~{copy}"] - 0.5 * i for i in range(N)] for copy in (1, 2)}
    assert all(0 <= shift < 1.0 for copy in shifts.values() for shift in copy)
    assert shifts[1] != shifts[2] and len({round(s, 9) for s in shifts[1]}) > N / 2  # apart, not a train
    for copy in (1, 2):  # a conversation's turns move together: its order and spacing kept
        session = [shifts[copy][i] for i in range(4)]  # req-000..003 are session s0
        assert max(session) - min(session) < 1e-9
    copies_of_session = {s for s in scaled.column("session_id").to_pylist() if s and s.startswith("s0")}
    assert copies_of_session == {"s0", "s0~1", "s0~2"}
    assert scaling.repeated_text_rows == 0  # synthesized prompts differ per copy


def test_recorded_text_sent_twice_is_counted():
    rows, offsets = _rows(40)
    with_text = rows.set_column(
        rows.schema.get_field_index("messages"), "messages", pa.array(['[{"role": "user", "content": "hi"}]'] * 40)
    )
    assert on_timeline(with_text, offsets, 2.0)[2].repeated_text_rows == 40
    assert 0 < on_timeline(with_text, offsets, 1.5)[2].repeated_text_rows < 40  # the thinned copy's rows
    assert on_timeline(with_text, offsets, 1.0)[2].method == "as logged"
