"""Token arrivals stamped where the connection reads them (replay/clients/read_stamps.py), over 127.0.0.1."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from shadowreplay.replay.clients import read_stamps
from shadowreplay.replay.clients.read_stamps import StampingConnector, StampingResponseHandler, read_stamp
from shadowreplay.replay.clients.stream_client import StreamingClient
from shadowreplay.replay.targets.config import TargetConfig, Timeouts
from tests.support.faulty_server import FaultyServerThread, Script

pytestmark = pytest.mark.timeout(60)

HELD_S = 0.08  # the event loop is kept busy this long after each read, before the reader's turn


@pytest.fixture(scope="module")
def server():
    with FaultyServerThread(Script(ttft_ms=20, itl_ms=150, tokens=3)) as running:
        yield running


def target(base_url: str) -> TargetConfig:
    return TargetConfig(
        name="faulty",
        kind="openai",
        base_url=base_url,
        model="faulty-model",
        api="completions",
        timeouts=Timeouts(connect_s=2, first_token_s=5, total_s=10),
    )


def test_the_connector_builds_stamping_connections(server):
    """Fails if aiohttp stops building connections with the connector's `_factory`."""

    async def go():
        async with aiohttp.ClientSession(connector=StampingConnector()) as session:
            request = {"model": "faulty-model", "prompt": "hi", "max_tokens": 1, "stream": True}
            async with session.post(server.base_url + "/completions", json=request) as response:
                stamp = read_stamp(response)  # a streamed body: its connection is held until the end
                first = await response.content.readany()
                now = time.perf_counter()
                read_at = stamp.now()
                await response.read()
                return stamp.stamped, first, read_at, now

    stamped, first, read_at, now = asyncio.run(go())
    assert stamped and first
    assert read_at < now, "the stamp is the read's, taken before the reader had the bytes"


def test_another_session_falls_back_to_the_readers_clock(server):
    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.get(server.base_url.removesuffix("/v1") + "/health") as response:
                stamp = read_stamp(response)
                await response.read()
                before = time.perf_counter()
                return stamp.stamped, before, stamp.now()

    stamped, before, now = asyncio.run(go())
    assert not stamped and now >= before


def test_token_times_are_the_reads_not_the_readers_turn(server, monkeypatch) -> None:
    """The loop is held up for HELD_S after every read (as by other requests' work in the same loop
    iteration): token times must still be the moments the reads happened."""
    reads: list[float] = []
    original = StampingResponseHandler.data_received

    def read_then_hold(self, data: bytes) -> None:
        if data:
            reads.append(time.perf_counter())
        original(self, data)
        if data:
            time.sleep(HELD_S)

    monkeypatch.setattr(read_stamps.StampingResponseHandler, "data_received", read_then_hold)

    async def go():
        async with aiohttp.ClientSession(connector=StampingConnector()) as session:
            client = StreamingClient(session, target(server.base_url))
            outcome = await client.send({"model": "faulty-model", "prompt": "hi", "max_tokens": 3})
            return outcome, time.perf_counter()

    outcome, finished = asyncio.run(go())
    assert outcome.status == "ok" and len(outcome.token_times) == 3
    for token_time in outcome.token_times:
        # the stamp of the read that carried the token: just after a read began, never HELD_S later
        assert any(0 <= token_time - read < HELD_S / 4 for read in reads), (token_time, reads)
    gaps = [b - a for a, b in zip(outcome.token_times, outcome.token_times[1:])]
    assert all(gap > HELD_S for gap in gaps), "each token came in a read of its own (150 ms apart)"
