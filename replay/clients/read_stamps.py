"""Socket reads stamped where they happen: an aiohttp connector whose connections note the moment
of each read, so a token's arrival time does not wait for the reading coroutine's turn.

A stream's reader learns of new bytes only when the event loop resumes it: after every other
callback that was ready in the same loop iteration (other connections' reads, other requests'
sends, timers). Under load that wait is the largest part of a client's token-timing error. With
`StampingConnector`, each connection's protocol (`StampingResponseHandler`) reads
`time.perf_counter()` at the top of `data_received`, before aiohttp parses anything; the stream
client reads that stamp (`last_read_at`) when it takes the bytes, and falls back to its own clock
for a connection that stamps nothing (another connector).

Which read a stamp belongs to: the reader takes everything buffered at once, so when two reads of
one connection arrived before the reader ran, both reads' events get the later read's stamp
(never earlier than the truth). The loop resumes a reader before it reads the same socket again,
so this happens only when the reader itself was held up.

aiohttp builds a connection's protocol with the connector's private `_factory` (checked on the
installed 3.14); tests/integration/test_read_stamps.py fails if a release stops using it.
"""

from __future__ import annotations

import functools
import time
from typing import cast

import aiohttp
from aiohttp.client_proto import ResponseHandler


class StampingResponseHandler(ResponseHandler):
    """aiohttp's client protocol, plus the perf_counter moment of the latest non-empty read."""

    last_read_at: float | None = None

    def data_received(self, data: bytes) -> None:
        if data:
            self.last_read_at = time.perf_counter()
        super().data_received(data)


class StampingConnector(aiohttp.TCPConnector):
    """A TCPConnector (same arguments) whose connections are `StampingResponseHandler`s."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # typeshed's partial is invariant; a partial making the subclass is a partial making a ResponseHandler
        self._factory = cast(
            "functools.partial[ResponseHandler]", functools.partial(StampingResponseHandler, loop=self._loop)
        )


def read_stamp(response: aiohttp.ClientResponse) -> ReadStamp:
    """The stamp source of a response's connection (taken once, after the headers arrived)."""
    connection = response.connection
    protocol = connection.protocol if connection is not None else None
    return ReadStamp(protocol if isinstance(protocol, StampingResponseHandler) else None)


class ReadStamp:
    """`now()`: the moment the bytes just read arrived at the connection, or this moment where the
    connection does not stamp its reads."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: StampingResponseHandler | None):
        self._protocol = protocol

    @property
    def stamped(self) -> bool:
        return self._protocol is not None

    def now(self) -> float:
        protocol = self._protocol
        if protocol is not None and protocol.last_read_at is not None:
            return protocol.last_read_at
        return time.perf_counter()
