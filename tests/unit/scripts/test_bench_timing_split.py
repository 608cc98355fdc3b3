"""scripts/bench_timing_split.py: a client's timing error split into the server's part and its own."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.support.paths import SCRIPTS

sys.path.insert(0, str(SCRIPTS))

from bench_timing_split import ClientStamps, ServerStamps, split_timing  # noqa: E402

TTFT_MS, ITL_MS, TOKENS = 20.0, 5.0, 4


def scenario(sends_s, send_path_ms, server_late_ms, receive_ms):
    """Client and server records of requests sent at `sends_s`, with known delays in ms."""
    arrivals = np.asarray(sends_s) + send_path_ms / 1000.0
    writes = [a + (TTFT_MS + np.arange(TOKENS) * ITL_MS + server_late_ms) / 1000.0 for a in arrivals]
    tokens = [w + receive_ms / 1000.0 for w in writes]
    return ClientStamps(np.asarray(sends_s), tokens), ServerStamps(arrivals, writes)


def test_known_delays_come_out_where_they_belong():
    sends = 1_000.0 + np.arange(10) * 0.01
    late = np.array([0.0, 0.2, 0.4, 0.6])  # the server's token i is i * 0.2 ms late
    client, server = scenario(sends, send_path_ms=0.3, server_late_ms=late, receive_ms=0.1)
    split = split_timing(client, server, TTFT_MS, ITL_MS, skip=2)
    assert (split.matched, split.unmatched) == (10, 0)
    assert len(split.send_path_ms) == 8, "the skipped warm-up requests are matched but not counted"
    assert split.send_path_ms == pytest.approx(0.3, abs=1e-6)
    assert split.receive_delay_ms == pytest.approx(0.1, abs=1e-6)
    assert split.client_ttft_err_ms == pytest.approx(0.4, abs=1e-6)  # send path + first receive delay
    assert split.client_itl_err_ms == pytest.approx(0.0, abs=1e-6)
    assert split.server_ttft_late_ms == pytest.approx(0.0, abs=1e-6)
    assert split.server_itl_err_ms == pytest.approx(0.2, abs=1e-6)


def test_requests_the_server_never_saw_are_unmatched_and_the_rest_still_pair_up():
    sends = 2_000.0 + np.arange(6) * 0.1
    client, server = scenario(sends, send_path_ms=0.5, server_late_ms=0.0, receive_ms=0.2)
    kept = [0, 1, 3, 4, 5]  # request 2 never reached the server
    server = ServerStamps(server.arrival_wall_s[kept], [server.write_wall_s[i] for i in kept])
    split = split_timing(client, server, TTFT_MS, ITL_MS, skip=0)
    assert (split.matched, split.unmatched) == (5, 1)
    assert split.send_path_ms == pytest.approx(0.5, abs=1e-6)
    assert split.client_ttft_err_ms == pytest.approx(0.7, abs=1e-6)


def test_server_stamps_are_read_in_arrival_order():
    stats = {"arrivals_wall_s": [3.0, 1.0, 2.0], "token_writes_wall_s": [[3.1], [1.1], [2.1]]}
    server = ServerStamps.from_stats(stats)
    assert list(server.arrival_wall_s) == [1.0, 2.0, 3.0]
    assert [list(w) for w in server.write_wall_s] == [[1.1], [2.1], [3.1]]
