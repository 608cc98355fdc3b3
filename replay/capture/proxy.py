"""The capture proxy: an aiohttp reverse proxy in front of production's LLM endpoint that passes every
request and response through unchanged, streamed chunk by chunk, and hands each finished exchange of
a recorded API (replay/capture/exchange.py) to a recorder.

What passes through unchanged: the method, path and query, every header but the hop-by-hop ones
(RFC 9110 7.6.1: `Connection`, `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`,
`Proxy-*`; `Host` and `Content-Length` are set again for the hop), the client's key in its own
header (forwarded to the upstream, never recorded: the exchange drops key headers when it is made),
the body as bytes, and the response's status, headers and body bytes, each chunk written to the
client as soon as it is read from the upstream (`iter_any`: no buffering of SSE; compressed bodies
stay compressed). Every path is proxied (`/v1/models`, `/health`, ...); only recorded APIs become rows.

When the upstream cannot be reached the client gets a 502 with an OpenAI-shaped JSON error naming
the upstream and the reason (`upstream_unavailable`), never a traceback. When a stream breaks after
it began (the upstream's connection lost, or the client gone), the response is cut where it broke,
as a direct connection would be, and the exchange is recorded with `prod_http_status` 502 (upstream)
or 499 (the client closed the request, nginx's convention) and `prod_status` `stream_error` or
`cancelled` (`connection_error` where the upstream could not be reached).

The recorder is called in the proxy's event loop after the response ended, so it must only queue
(replay/capture's recorder hands rows to the one shard writer's background thread).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from yarl import URL

from shadowreplay.replay.capture.exchange import CapturedExchange, CaptureFields

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
"""Headers aiohttp's client would add to a request that lacks them: skipped, the request goes on as sent."""
UPSTREAM_LOST_STATUS = 502
CLIENT_CLOSED_STATUS = 499
CONNECT_TIMEOUT_S = 10.0


def forwarded_headers(headers: aiohttp.typedefs.LooseHeaders) -> list[tuple[str, str]]:
    """`headers` without the hop-by-hop ones (this module's docstring), repeated headers kept."""
    items = headers.items() if hasattr(headers, "items") else headers
    return [(name, value) for name, value in items if name.lower() not in HOP_BY_HOP]


@dataclass
class ProxyCounts:
    """What the proxy did since it started: requests passed on, exchanges recorded, upstream failures."""

    requests: int = 0
    recorded: int = 0
    upstream_unavailable: int = 0
    upstream_lost: int = 0
    client_closed: int = 0
    in_flight: int = 0


@dataclass
class CaptureProxy:
    """Serves `app()`; each request goes to `upstream` (scheme, host and any path prefix: the request's
    path is appended); `admit` each exchange of a recorded API when its request arrived, before it is
    passed on; `record` each finished one."""

    upstream: str
    record: Callable[[CapturedExchange], None]
    fields: CaptureFields = field(default_factory=CaptureFields)
    admit: Callable[[CapturedExchange], None] | None = None  # a recordable request arrived (sampling, mirror)
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    counts: ProxyCounts = field(default_factory=ProxyCounts)
    _session: aiohttp.ClientSession | None = field(default=None, init=False)
    _idle: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._forward)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no request is in flight (SIGTERM: the ones begun are finished and recorded);
        False when `timeout_s` passed first."""
        if self.counts.in_flight == 0:
            return True
        self._idle.clear()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _start(self, app: web.Application) -> None:
        timeout = aiohttp.ClientTimeout(total=None, connect=self.connect_timeout_s, sock_read=None)
        connector = aiohttp.TCPConnector(limit=0)  # production's concurrency is the client's, not ours
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            connector=connector,
            auto_decompress=False,  # compressed bodies pass on compressed
            cookie_jar=aiohttp.DummyCookieJar(),  # one client's cookies never reach another's request
            skip_auto_headers=AUTO_HEADERS,  # no header the client did not send
        )

    async def _stop(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None, "the proxy's app was not started"
        self.counts.requests += 1
        self.counts.in_flight += 1
        try:
            return await self._pass_on(request, self._session)
        finally:
            self.counts.in_flight -= 1
            if self.counts.in_flight == 0:
                self._idle.set()

    async def _pass_on(self, request: web.Request, session: aiohttp.ClientSession) -> web.StreamResponse:
        body = await request.read()
        exchange = CapturedExchange(
            path=request.path,
            headers={name.lower(): value for name, value in request.headers.items()},
            body=body,
            arrival_us=time.time_ns() // 1000,
            received_s=time.monotonic(),
            fields=self.fields,
        )
        if self.admit is not None and exchange.recordable:
            self.admit(exchange)
        url = URL(self.upstream.rstrip("/") + request.rel_url.raw_path_qs, encoded=True)  # as sent, not requoted
        response: web.StreamResponse | None = None
        try:
            async with session.request(
                request.method,
                url,
                headers=forwarded_headers(request.headers),
                data=body if body else None,
                allow_redirects=False,
            ) as upstream:
                exchange.response_started(
                    upstream.status,
                    upstream.headers.get("Content-Type", ""),
                    upstream.headers.get("Content-Encoding", ""),
                )
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in forwarded_headers(upstream.headers):
                    response.headers.add(name, value)
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)  # to the client first: recording never delays it
                    exchange.feed(chunk, time.monotonic())
                await response.write_eof()
        except ConnectionResetError:  # the client went away mid-response: nothing left to answer
            self.counts.client_closed += 1
            exchange.status, exchange.broken = CLIENT_CLOSED_STATUS, "cancelled"
            if request.transport is not None:
                request.transport.abort()
            return response if response is not None else web.Response(status=CLIENT_CLOSED_STATUS)
        except asyncio.CancelledError:  # the server stopping (or the client gone, where it cancels handlers)
            self.counts.client_closed += 1
            exchange.status, exchange.broken = CLIENT_CLOSED_STATUS, "cancelled"
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            if response is None:  # nothing sent yet: the client gets a clean error
                self.counts.upstream_unavailable += 1
                exchange.status, exchange.broken = UPSTREAM_LOST_STATUS, "connection_error"
                return self._unavailable(exc)
            self.counts.upstream_lost += 1  # the stream broke after it began: cut it, as the upstream did
            exchange.status, exchange.broken = UPSTREAM_LOST_STATUS, "stream_error"
            if request.transport is not None:
                request.transport.abort()  # no clean end of the body: the client sees the break
            return response
        finally:
            exchange.finish(time.monotonic())
            if exchange.recordable:
                self.counts.recorded += 1
                self.record(exchange)
        return response

    def _unavailable(self, exc: BaseException) -> web.Response:
        reason = str(exc) or type(exc).__name__
        return web.json_response(
            {
                "error": {
                    "message": f"shadowreplay capture: upstream {self.upstream} unavailable: {reason}",
                    "type": "upstream_unavailable",
                    "code": UPSTREAM_LOST_STATUS,
                }
            },
            status=UPSTREAM_LOST_STATUS,
        )
