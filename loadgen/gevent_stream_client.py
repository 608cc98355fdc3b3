"""One streamed request to a target from a gevent greenlet (a Locust user), timed token by token.

The same contract as replay/stream_client.py's StreamingClient, over geventhttpclient instead of
aiohttp (Locust runs users as greenlets; an asyncio client would block its hub): `send(body)`
returns a `replay.results.StreamOutcome` whose `status` is one of `replay.results.STATUSES`, with
the same clocks, the same token accounting (`replay.stream_client.TokenTimeline`), the same wire
protocols (`replay.protocols`: request bodies and event interpretation) and the same SSE parser
(`replay.sse.SSEParser`), so a Locust run's result rows mean what a replay's do.

Reading: the body is read a line at a time with geventhttpclient's `readline(b"\\n")`, which returns
each line as soon as it has arrived (a line already buffered returns at once), and each line is
stamped on return; every OpenAI-compatible server ends SSE lines with LF or CRLF. A stream whose
lines end with a bare CR (allowed by the SSE spec, sent by no LLM server we know) is still parsed
correctly, but only once the body ends, so its token times are all the end of the stream.

Status rules (as StreamingClient's): HTTP status >= 300 -> `http_error` (the body's error message,
`retry_after_s` from Retry-After, else from the provider's rate-limit reset headers); a JSON answer instead of an event stream, an error object in the stream, an event
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

from replay.protocols import (
    RequestNotTranslatable,
    StreamEvent,
    WireProtocol,
    WireProtocolError,
    protocol_for_target,
)
from replay.rate_limit_headers import rate_limit_wait_s
from replay.results import StreamOutcome
from replay.sse import SSEParser
from replay.stream_client import (
    DRAIN_AFTER_DONE_S,
    ERROR_BODY_LIMIT,
    ERROR_TEXT_LIMIT,
    REDACTED,
    StreamLimits,
    TokenCounter,
    TokenTimeline,
    parse_retry_after,
)
from replay.targets import TargetConfig

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

    def send(self, body: dict) -> StreamOutcome:
        """Send one canonical (OpenAI-shaped) request body and follow its stream to the end.
        Raises only StreamCancelled (the greenlet is being killed)."""
        outcome = StreamOutcome()
        try:
            request = self.protocol.build_request(body, self._api_key)
            payload = json.dumps(request.body).encode()
        except (RequestNotTranslatable, TypeError, ValueError) as exc:
            outcome.status = "http_error"
            outcome.error = self.scrub(f"request not sent: {exc}")
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

    def scrub_all(self, text: str) -> str:
        """`text` with the API key removed (a server may echo anything back, even in its answer)."""
        return text.replace(self._api_key, REDACTED) if self._api_key else text

    def scrub(self, text: str) -> str:
        """`text` with the API key removed, cut to ERROR_TEXT_LIMIT characters."""
        text = self.scrub_all(text)
        if len(text) > ERROR_TEXT_LIMIT:
            text = text[: ERROR_TEXT_LIMIT - 3] + "..."
        return text


class _Exchange:
    """The state of one request while it runs (not shared between requests)."""

    __slots__ = ("client", "outcome", "timeline", "response", "first_token_timeout", "settled", "ended", "content")

    def __init__(self, client: GeventStreamingClient, outcome: StreamOutcome):
        self.client = client
        self.outcome = outcome
        self.timeline = TokenTimeline(client.token_counter)
        self.response: HTTPSocketPoolResponse | None = None
        self.first_token_timeout: gevent.Timeout | None = None
        self.settled = False  # the status is decided; later failures (e.g. while draining) do not change it
        self.ended = False  # [DONE] seen
        self.content: list[str] | None = [] if client.keep_output_text else None

    def fail(self, status: str, error: str) -> None:
        if self.settled:
            return
        self.outcome.status = status
        self.outcome.error = self.client.scrub(error)
        self.settled = True

    def follow(self) -> None:
        """Check the response's status and type, then read its events to the end."""
        response, outcome = self.response, self.outcome
        outcome.http_status = response.status_code
        if response.status_code >= 300:
            self._http_error(response)
            return
        if "json" in (response.get("content-type") or ""):
            body = response.read(ERROR_BODY_LIMIT)
            message = self.client.protocol.error_message(body)
            self.fail("stream_error", f"server answered JSON, not an event stream: {message}")
            return
        parser = SSEParser()
        while not self.settled:
            line = response.readline(LINE_END)
            if not line:  # the body ended; a last line without LF is still in the buffer
                self._events(parser.feed(response.read()), time.perf_counter())
                break
            self._events(parser.feed(line), time.perf_counter())
        if self.ended:
            self._drain(response)
        elif outcome.finish_reason is not None and not self.settled:
            outcome.status = "ok"  # a clean end of the body after a finish reason, without [DONE]
            outcome.done = time.perf_counter()
            self.settled = True
        elif not self.settled:
            where = " (inside an unterminated event)" if parser.pending else ""
            self.fail("stream_error", f"stream ended without [DONE] or a finish reason{where}")

    def _events(self, events: list, at: float) -> None:
        """Take the events completed by one read, all stamped `at`."""
        protocol, outcome, timeline = self.client.protocol, self.outcome, self.timeline
        for sse in events:
            if self.settled:
                return
            event: StreamEvent | None = protocol.interpret(sse)
            if event is None:
                continue
            if event.error is not None:
                self.fail("stream_error", f"error in stream: {event.error}")
                return
            if event.usage is not None:
                if event.usage.prompt_tokens is not None:
                    outcome.prompt_tokens = event.usage.prompt_tokens
                if event.usage.completion_tokens is not None:
                    outcome.completion_tokens = event.usage.completion_tokens
            if event.finish_reason is not None:
                outcome.finish_reason = event.finish_reason
            if event.carries_output:
                had_output = timeline.first_output_at is not None
                timeline.add(at, event)
                if not had_output and timeline.first_output_at is not None:
                    self.first_token_timeout.cancel()  # from the first output token on, only `total` applies
                if self.content is not None and event.content:
                    self.content.append(event.content)
            elif event.usage is not None:
                timeline.add(at, event)
            if event.done:
                self.ended = True
                outcome.done = at
                outcome.status = "ok"
                self.settled = True

    def _drain(self, response: HTTPSocketPoolResponse) -> None:
        """Read what follows [DONE] (normally just the body's end) so the connection can go back to
        the pool; bounded, and nothing that happens here changes the outcome."""
        try:
            with gevent.Timeout(DRAIN_AFTER_DONE_S, False):
                while not response.message_complete and response.readline(LINE_END):
                    pass
        except (OSError, HTTPConnectionClosed, ValueError):
            pass

    def _http_error(self, response: HTTPSocketPoolResponse) -> None:
        outcome, client = self.outcome, self.client
        retry_after = parse_retry_after(response)
        outcome.retry_after_s = retry_after if retry_after is not None else rate_limit_wait_s(response)
        self.fail("http_error", f"HTTP {response.status_code} {response.status_message or ''}".rstrip())
        body = response.read(ERROR_BODY_LIMIT)
        message = client.protocol.error_message(body)
        if message:
            outcome.error = client.scrub(f"HTTP {response.status_code}: {message}")

    def finish(self) -> None:
        """Fill in the token timings (whatever the status) and the end time."""
        outcome = self.outcome
        if outcome.done is None:
            outcome.done = time.perf_counter()
        token_times, client_tokens = self.timeline.resolve(outcome.completion_tokens)
        outcome.token_times = token_times
        outcome.client_tokens = client_tokens
        if token_times:
            outcome.first_token = token_times[0]
            outcome.last_token = token_times[-1]
        if self.content is not None:
            outcome.output_text = self.client.scrub_all("".join(self.content))
