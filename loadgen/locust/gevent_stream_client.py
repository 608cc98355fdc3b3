"""One streamed request to a target from a gevent greenlet (a Locust user), timed token by token.

The same contract as replay/clients/stream_client.py's StreamingClient, over geventhttpclient instead of
aiohttp (Locust runs users as greenlets; an asyncio client would block its hub): `send(body)`
returns a `shadowreplay.replay.schemas.results.StreamOutcome` whose `status` is one of
`shadowreplay.replay.schemas.results.STATUSES`, with the same clocks, the same events-to-outcome logic
(`shadowreplay.replay.clients.stream_client.StreamAttempt`: token
accounting, status rules, error texts), the same wire protocols (`shadowreplay.replay.clients.protocols`) and the same
SSE parser (`shadowreplay.replay.clients.sse.SSEParser`), so a Locust run's result rows mean what a replay's do; only
the I/O and the timeouts are gevent's here.

Reading: the body is read a line at a time with geventhttpclient's `readline(b"\\n")`, which returns
each line as soon as it has arrived (a line already buffered returns at once), and each line is
stamped on return; every OpenAI-compatible server ends SSE lines with LF or CRLF. A stream whose
lines end with a bare CR (allowed by the SSE spec, sent by no LLM server we know) is still parsed
correctly, but only once the body ends, so its token times are all the end of the stream.

Status rules (as StreamingClient's): HTTP status >= 300 -> `http_error` (the body's error message,
`retry_after_s` from Retry-After, else from the provider's rate-limit reset headers); a JSON
answer instead of an event stream, an error object in the stream, an event
that is not valid JSON, or a body that ends without [DONE] and without a finish reason ->
`stream_error`; no connection within `connect_s`, no output token within `first_token_s` of `sent`,
or no end within `total_s` of `sent` -> `timeout`; refused, reset or broken connections ->
`connection_error`. When the greenlet is killed (Locust stopping a user), `send` raises
`StreamCancelled`, a GreenletExit that carries the `cancelled` outcome with its partial timings:
the caller records it and lets the exception end the greenlet. The API key goes into a request
header only; every error text, and the kept output text, is scrubbed of it.
"""

from __future__ import annotations

import json
import socket
import time

import gevent
from geventhttpclient.client import HTTPClientPool
from geventhttpclient.response import HTTPConnectionClosed, HTTPSocketPoolResponse
from geventhttpclient.url import URL
from multidict import CIMultiDict

from shadowreplay.replay.clients.protocols import (
    RequestNotTranslatable,
    WireProtocol,
    WireProtocolError,
    protocol_for_target,
)
from shadowreplay.replay.clients.sse import SSEParser
from shadowreplay.replay.clients.stream_client import (
    DRAIN_AFTER_DONE_S,
    ERROR_BODY_LIMIT,
    ERROR_TEXT_LIMIT,
    StreamAttempt,
    StreamLimits,
    TokenCounter,
)
from shadowreplay.replay.schemas.results import StreamOutcome
from shadowreplay.replay.secrets import Scrubber
from shadowreplay.replay.targets.config import TargetConfig

LINE_END = b"\n"


class StreamCancelled(gevent.GreenletExit):
    """The greenlet was killed while its request ran; `outcome` is the `cancelled` outcome."""

    def __init__(self, outcome: StreamOutcome):
        super().__init__("request cancelled")
        self.outcome = outcome


def client_pool(target: TargetConfig) -> HTTPClientPool:
    """A geventhttpclient pool for one user of `target`: one keep-alive connection per host, the
    target's connect limit; the per-read network limit is set past `total_s` so that the
    client's own first-token and total deadlines always decide."""
    return HTTPClientPool(
        concurrency=1,
        connection_timeout=target.timeouts.connect_s,
        network_timeout=target.timeouts.total_s + 1.0,
        insecure=False,
    )


class GeventStreamingClient:
    """Sends streamed requests to one target over a geventhttpclient pool (one per Locust user).

    `target` gives base_url, api/kind (hence the wire protocol), timeouts and the API key (read
    once, here). `token_counter(text) -> int` counts tokens client-side; None without a tokenizer.
    """

    def __init__(
        self,
        pool: HTTPClientPool,
        target: TargetConfig,
        *,
        token_counter: TokenCounter | None = None,
        keep_output_text: bool = False,
        protocol: WireProtocol | None = None,
    ):
        if not target.base_url:
            raise ValueError(f"target {target.name} has no base_url")
        self._pool = pool
        self.base_url = target.base_url
        self.protocol = protocol or protocol_for_target(target)
        self.limits = StreamLimits(target.timeouts.connect_s, target.timeouts.first_token_s, target.timeouts.total_s)
        self.token_counter = token_counter
        self.keep_output_text = keep_output_text
        self._api_key = target.api_key()
        self.scrubber = Scrubber([self._api_key])

    def send(self, body: dict) -> StreamOutcome:
        """Send one canonical (OpenAI-shaped) request body and follow its stream to the end.
        Raises only StreamCancelled (the greenlet is being killed)."""
        outcome = StreamOutcome()
        try:
            request = self.protocol.build_request(body, self._api_key)
            payload = json.dumps(request.body).encode()
        except (RequestNotTranslatable, TypeError, ValueError) as exc:
            outcome.status = "http_error"
            outcome.error = self.scrubber.cut(f"request not sent: {exc}", ERROR_TEXT_LIMIT)
            return outcome
        url = URL(self.base_url + request.path)
        exchange = _Exchange(self, outcome)
        limits = self.limits
        total = gevent.Timeout(limits.total_s)
        first = gevent.Timeout(min(limits.first_token_s, limits.total_s))
        outcome.sent = time.perf_counter()
        total.start()
        first.start()
        exchange.first_token_timeout = first
        try:
            http = self._pool.get_client(url)
            exchange.response = http.request("POST", url.request_uri, body=payload, headers=request.headers)
            exchange.follow()
        except gevent.Timeout as fired:
            if fired is first and exchange.timeline.first_output_at is None and limits.first_token_s < limits.total_s:
                exchange.fail("timeout", f"first-token timeout: no output token within {limits.first_token_s:g} s")
            elif fired is first or fired is total:
                exchange.fail("timeout", f"total timeout: stream not finished within {limits.total_s:g} s")
            else:
                raise  # someone else's timeout
        except gevent.GreenletExit:
            exchange.fail("cancelled", "cancelled: the Locust user was stopped")
            exchange.finish()
            raise StreamCancelled(outcome) from None
        except TimeoutError as exc:  # the pool's connect limit (reads are bounded by `total` first)
            exchange.fail("timeout", f"connect timeout: no connection within {limits.connect_s:g} s ({exc})")
        except ConnectionRefusedError as exc:
            exchange.fail("connection_error", f"cannot connect: {exc}")
        except HTTPConnectionClosed as exc:
            exchange.fail("connection_error", f"server disconnected: {exc}")
        except (ConnectionError, socket.gaierror) as exc:
            exchange.fail("connection_error", f"{type(exc).__name__}: {exc}")
        except OSError as exc:
            exchange.fail("connection_error", f"{type(exc).__name__}: {exc}")
        except WireProtocolError as exc:
            exchange.fail("stream_error", str(exc))
        except Exception as exc:  # nothing may escape: an unforeseen failure is still one outcome
            exchange.fail("stream_error", f"client error: {type(exc).__name__}: {exc}")
        finally:
            first.close()
            total.close()
            if exchange.response is not None:
                exchange.response.release()  # back to the pool when complete, else closed
        exchange.finish()
        return outcome


class _Exchange(StreamAttempt):
    """One request on geventhttpclient: its response, its first-token timeout and its reads (not
    shared between requests)."""

    __slots__ = ("response", "first_token_timeout")

    def __init__(self, client: GeventStreamingClient, outcome: StreamOutcome):
        super().__init__(outcome, client.protocol, client.token_counter, client.keep_output_text, client.scrubber)
        self.response: HTTPSocketPoolResponse | None = None
        self.first_token_timeout: gevent.Timeout | None = None

    def first_output_arrived(self) -> None:
        """From the first output token on, only `total` applies."""
        if self.first_token_timeout is not None:
            self.first_token_timeout.cancel()

    def follow(self) -> None:
        """Check the response's status and type, then read its events to the end."""
        response = self.response
        assert response is not None, "follow() before the request was sent"
        self.outcome.http_status = response.status_code
        if response.status_code >= 300:
            # as aiohttp's headers: case-insensitive, the first value of a repeated header (the response's
            # own get() gives a list for one, which the Retry-After and rate-limit parsers cannot read)
            self.http_error(response.status_code, response.status_message, CIMultiDict(response.items()))
            self.http_error_body(response.status_code, response.read(ERROR_BODY_LIMIT))
            return
        if "json" in (response.get("content-type") or ""):
            self.not_an_event_stream(response.read(ERROR_BODY_LIMIT))
            return
        parser = SSEParser()
        while not self.settled:
            line = response.readline(LINE_END)
            at = time.perf_counter()  # the read's arrival, before any parsing
            if not line:  # the body ended; a last line without LF is still in the buffer
                self.take(parser.feed(response.read()), at)
                break
            self.take(parser.feed(line), at)
        if self.ended:
            self._drain(response)
        else:
            self.body_ended(parser.pending)

    def _drain(self, response: HTTPSocketPoolResponse) -> None:
        """Read what follows [DONE] (normally just the body's end) so the connection can go back to
        the pool; bounded, and nothing that happens here changes the outcome."""
        try:
            with gevent.Timeout(DRAIN_AFTER_DONE_S, False):
                while not response.message_complete and response.readline(LINE_END):
                    pass
        except (OSError, HTTPConnectionClosed, ValueError):
            pass
