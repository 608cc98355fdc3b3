"""A client's timing error against a scripted server, split into the server's part and the client's own.

The scripted server (scripts/bench_scripted_server.py) records, per request, when the request
arrived and when each token chunk's write had returned; one worker (scripts/bench_one_worker.py)
records when it sent each request and when each token arrived. Both stamp with perf_counter and map
it to the wall clock by an offset each measured once (replay/clock.py); on one host both
clocks are the same kernel clocks, so the two records share one timeline to about a microsecond.

For each request (matched by order: the k-th request the client sent is the k-th the server saw,
checked by the gap between them):

    measured TTFT - scripted TTFT   =  server TTFT lateness  +  client's part
    server TTFT lateness            =  (first write - arrival) - scripted TTFT
    client's part of TTFT           =  (arrival - sent) + (first token stamp - first write)
    measured gap - scripted gap     =  (server's gap - scripted gap) + (client's gap - server's gap)

The client's part is what the load generator itself gets wrong (its send path, the loopback and
its receive path); the server's part is the scripted truth not being kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MATCH_LIMIT_MS = 50.0  # a request that reached the server later than this after its send is no match


@dataclass(frozen=True)
class ClientStamps:
    """Per request, sorted by send: the send moment and every token's arrival, wall-clock seconds."""

    sent_wall_s: np.ndarray
    token_wall_s: list[np.ndarray]


@dataclass(frozen=True)
class ServerStamps:
    """Per request, in arrival order: the arrival and every token chunk's write, wall-clock seconds."""

    arrival_wall_s: np.ndarray
    write_wall_s: list[np.ndarray]

    @classmethod
    def from_stats(cls, stats: dict) -> ServerStamps:
        """From the scripted server's `/bench/stats?per_request=1` answer."""
        order = np.argsort(stats["arrivals_wall_s"], kind="stable")
        arrivals = np.asarray(stats["arrivals_wall_s"], dtype=float)[order]
        writes = [np.asarray(stats["token_writes_wall_s"][i], dtype=float) for i in order]
        return cls(arrivals, writes)


@dataclass(frozen=True)
class TimingSplit:
    """Signed per-sample errors in ms (see the module docstring), over the matched requests."""

    matched: int
    unmatched: int
    send_path_ms: np.ndarray  # arrival - sent
    receive_delay_ms: np.ndarray  # token stamp - its write, every token
    client_ttft_err_ms: np.ndarray  # measured TTFT - the server's (first write - arrival)
    client_itl_err_ms: np.ndarray  # measured gap - the server's gap between the same two writes
    server_ttft_late_ms: np.ndarray  # (first write - arrival) - scripted TTFT
    server_itl_err_ms: np.ndarray  # the server's gap - scripted gap


def split_timing(client: ClientStamps, server: ServerStamps, ttft_ms: float, itl_ms: float, skip: int) -> TimingSplit:
    """Match requests in order and split their errors; the first `skip` client requests (warm-up)
    are matched but left out of the figures."""
    send_path, receive, client_ttft, client_itl, server_ttft, server_itl = ([] for _ in range(6))
    matched = unmatched = 0
    j = 0
    arrivals = server.arrival_wall_s
    for i, sent in enumerate(client.sent_wall_s):
        while j < len(arrivals) and arrivals[j] < sent:  # a request the client did not send in this run
            j += 1
        if j == len(arrivals) or (arrivals[j] - sent) * 1000.0 > MATCH_LIMIT_MS:
            unmatched += 1
            continue
        arrival, writes, tokens = arrivals[j], server.write_wall_s[j], client.token_wall_s[i]
        j += 1
        if len(writes) != len(tokens) or not len(tokens):
            unmatched += 1
            continue
        matched += 1
        if i < skip:
            continue
        send_path.append((arrival - sent) * 1000.0)
        receive.append((tokens - writes) * 1000.0)
        client_ttft.append(((tokens[0] - sent) - (writes[0] - arrival)) * 1000.0)
        client_itl.append((np.diff(tokens) - np.diff(writes)) * 1000.0)
        server_ttft.append((writes[0] - arrival) * 1000.0 - ttft_ms)
        server_itl.append(np.diff(writes) * 1000.0 - itl_ms)

    def flat(parts: list) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0)

    return TimingSplit(
        matched,
        unmatched,
        np.asarray(send_path),
        flat(receive),
        np.asarray(client_ttft),
        flat(client_itl),
        np.asarray(server_ttft),
        flat(server_itl),
    )
