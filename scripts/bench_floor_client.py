"""The floor: the least a Python client can do, on this machine and at this moment, to time tokens.

    python scripts/bench_floor_client.py --port P --rate R --count N --tokens T [--busy-poll]

A reference for scripts/bench_loadgen.py, not a load generator: it knows only the scripted server's
answer (one token " t<i>" per SSE event, chunked transfer encoding), so it parses nothing. It sends
one pre-built /v1/completions request every 1 / R seconds (uvloop; sleeping, then yielding for the
last 2 ms, as a replay worker waits), each on an idle keep-alive connection of its own pool (a new
one when none is idle), and stamps `time.perf_counter()` at the top of `data_received`: a token's
stamp is the moment the event loop read it. With `--busy-poll` the loop never sleeps (as a replay
worker's with `replay --busy-poll`). Whatever timing error this client shows (against the
scripted server's record of what it really sent) is the platform's (scheduler, VM, loopback) and
the event loop's, not any client code's: it sets the floor under every tool's figures in the same
run.

The last line of stdout is JSON: `wall_minus_perf` (to map the perf_counter stamps onto the wall
clock) and `requests`, each `{"sent": perf, "tokens": [perf, ...]}` (requests that did not end
with the chunked terminator are left out; `incomplete` counts them).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from pathlib import Path
from typing import cast

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from shadowreplay.replay.clock import ClockMapping  # noqa: E402

SPIN_BEFORE_SEND_S = 0.002
START_LEAD_S = 0.5
TOKEN_MARK = b'"text":" t'  # each token event of the scripted server carries its text " t<i>"
END_MARK = b"0\r\n\r\n"  # the chunked body's terminator


class FloorConnection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, token reads stamped on arrival."""

    def __init__(self, idle: list[FloorConnection], finished: list[dict]):
        self.idle, self.finished = idle, finished
        self.transport: asyncio.Transport | None = None
        self.current: dict | None = None
        self.tail = b""  # the last bytes of the previous read: a mark may straddle two reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP connection's transport

    def send(self, request: bytes) -> None:
        self.current = {"sent": time.perf_counter(), "tokens": []}
        self.tail = b""
        assert self.transport is not None, "send() before connection_made()"
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        at = time.perf_counter()
        current = self.current
        if current is None:
            return
        seen = self.tail + data
        current["tokens"].extend([at] * (seen.count(TOKEN_MARK) - self.tail.count(TOKEN_MARK)))
        if seen.endswith(END_MARK):
            self.finished.append(current)
            self.current = None
            self.idle.append(self)
        else:
            self.tail = seen[-16:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.current = None
        if self in self.idle:
            self.idle.remove(self)


def request_bytes(port: int, tokens: int) -> bytes:
    body = json.dumps({"model": "scripted", "prompt": "floor", "max_tokens": tokens, "stream": True}).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def poll_forever() -> None:
    while True:
        await asyncio.sleep(0)


async def run(port: int, rate: float, count: int, tokens: int, busy_poll: bool) -> list[dict]:
    loop = asyncio.get_running_loop()
    poller = asyncio.create_task(poll_forever()) if busy_poll else None
    idle: list[FloorConnection] = []
    finished: list[dict] = []
    opened: list[FloorConnection] = []
    request = request_bytes(port, tokens)
    gc.collect()
    gc.freeze()
    start = time.perf_counter() + START_LEAD_S
    for i in range(count):
        moment = start + i / rate
        while (remaining := moment - time.perf_counter()) > SPIN_BEFORE_SEND_S:
            await asyncio.sleep(remaining - SPIN_BEFORE_SEND_S)
        while time.perf_counter() < moment:
            await asyncio.sleep(0)
        if idle:
            connection = idle.pop()
        else:
            _, connection = await loop.create_connection(lambda: FloorConnection(idle, finished), "127.0.0.1", port)
            opened.append(connection)
        connection.send(request)
    deadline = time.perf_counter() + 30.0
    while len(finished) < count and time.perf_counter() < deadline and any(c.current for c in opened):
        await asyncio.sleep(0.05)
    for connection in opened:
        assert connection.transport is not None  # create_connection() returned: connection_made() ran
        connection.transport.close()
    if poller is not None:
        poller.cancel()
    return finished


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="the scripted server's port on 127.0.0.1")
    parser.add_argument("--rate", type=float, required=True, help="requests per second, constant")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--tokens", type=int, required=True, help="max_tokens of every request")
    parser.add_argument("--busy-poll", action="store_true", help="the event loop polls without sleeping")
    args = parser.parse_args(argv)
    finished = uvloop.run(run(args.port, args.rate, args.count, args.tokens, args.busy_poll))
    wall_minus_perf = ClockMapping.measure_wall_minus_perf()
    print(
        json.dumps({"wall_minus_perf": wall_minus_perf, "requests": finished, "incomplete": args.count - len(finished)})
    )


if __name__ == "__main__":
    main()
