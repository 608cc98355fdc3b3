"""One streamed request to a target, timed token by token; every outcome becomes a status.

`StreamingClient.send(body)` never raises: whatever happens (an HTTP error, a timeout, a refused or
reset connection, a broken stream, cancellation) it returns a `shadowreplay.replay.schemas.results.StreamOutcome`
whose `status` is one of `shadowreplay.replay.schemas.results.STATUSES`.

Clocks: every time is `time.perf_counter()` of the calling process.
- `sent` is read immediately before the request is handed to aiohttp (the body is serialized
  before), so TTFT includes connection set-up when a new connection is needed, as a user's would.
- Each read from the socket is stamped once on arrival; all events in that read share the stamp.
  With a `shadowreplay.replay.clients.read_stamps.StampingConnector` session (what replay workers use) the stamp is
  taken in the connection's `data_received`, before the event loop gets round to this request's
  reader; with any other session, when the reader takes the bytes.
- `done` is the arrival of the end of the stream ([DONE], or the end of the body), or the moment
  the request failed.

Which chunks are output tokens (docs/DESIGN.md: TTFT to the first content or reasoning token,
never to a role-only or empty chunk; a chunk carrying k tokens counts k times). An *output chunk*
is an event that carries an output field (content, reasoning or tool-call text), even as "":
role-only openings, finish-only chunks without an output field and the usage-only final chunk are
not output chunks.

1. The client's own count, `client_tokens`, never reads the server's usage (it is what the
   token-count mismatch check holds against the usage, so it must be able to differ):
   - a chunk whose logprobs say how many tokens it carries counts that many;
   - every other output chunk is a token event and counts at least 1, empty text included (a
     server streaming one token per chunk, as vLLM does, sends "" for a token whose bytes end
     inside a UTF-8 character, about 3% of tokens, and for special tokens);
   - where chunks carry several tokens, the token counter (when given) counts a chunk's text, and
     the chunk with the empty chunks just before it (the bytes of the same characters) counts
     max(their number, the counter's count). The counter's count is trusted only where text
     round-trips: a replacement character U+FFFD in the text stands for bytes the decoder lost, so
     the pieces between replacement characters are counted and each one counts one token. The
     decoded text of the whole answer is never re-tokenized: split characters and token
     boundaries do not survive it. Without a counter, a chunk with text counts 1.
   - The one reading the wire leaves open: a trailing chunk with empty text and the finish reason
     is a token on vLLM (its end-of-sequence token, or a split character) and no token on
     OpenAI-style servers; it counts 1 only where the server's usage equals the count with it, so
     that this alone never makes a mismatch. Every other difference from the usage stays.
   A broken counter leaves `client_tokens` None.
2. `token_times`, one entry per token (k equal entries for a k-token chunk), non-decreasing:
   if the server's usage gives `completion_tokens` equal to the number of output chunks (or to it
   minus that trailing empty finish chunk), one entry per chunk; else k per chunk as the wire says
   (logprobs entries, or the step in cumulative usage when the server reports usage in every
   chunk, vLLM's `continuous_usage_stats`), else the client's count of rule 1. Where such client
   counts do not add up to the server's usage, the usage total is shared over the chunks in
   proportion to them, so `len(token_times) == completion_tokens` still.
`first_token` and `last_token` are the first and last entries of `token_times`.

Status rules: HTTP status >= 300 -> `http_error` (the body's error message, `retry_after_s` from
Retry-After or retry-after-ms, else from the provider's rate-limit reset headers, see
replay/clients/rate_limit_headers.py); a JSON answer instead of an event stream, an error object inside
the stream, an event that is not valid JSON, or a body that ends without [DONE] and without a
finish reason -> `stream_error`; no connection within `connect_s`, no output token within
`first_token_s` of `sent`, or no end within `total_s` of `sent` -> `timeout` (the error says
which); refused, reset or broken connections -> `connection_error`; cancellation of the calling
task -> `cancelled`. Partial timings stay in the outcome whatever the status.

Cancellation is consumed, not re-raised, so that the caller can still record the request's row:
`send()` returns the `cancelled` outcome and the task's `cancelling()` count stays raised, so a
caller can tell it was asked to stop. The API key goes into a request header only; every error
text, and the kept output text, is scrubbed of it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp

from shadowreplay.replay.clients.protocols import (
    RequestNotTranslatable,
    StreamEvent,
    WireProtocol,
    WireProtocolError,
    protocol_for_target,
)
from shadowreplay.replay.clients.rate_limit_headers import rate_limit_wait_s
from shadowreplay.replay.clients.read_stamps import read_stamp
from shadowreplay.replay.clients.sse import SSEParser
from shadowreplay.replay.schemas.results import StreamOutcome
from shadowreplay.replay.secrets import Scrubber
from shadowreplay.replay.targets.config import TargetConfig

TokenCounter = Callable[[str], int]

ERROR_TEXT_LIMIT = 300  # characters of a server's error message kept in `error`
ERROR_BODY_LIMIT = 64 * 1024  # bytes of an error response body read
DRAIN_AFTER_DONE_S = 1.0  # after [DONE], how long to wait for the body's end (keeps the connection reusable)


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Per-request limits in seconds: connecting; from `sent` to the first output token; from `sent`
    to the end of the stream."""

    connect_s: float = 10.0
    first_token_s: float = 60.0
    total_s: float = 600.0


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds to wait before retrying, from `retry-after-ms` or `Retry-After` (delay-seconds or an
    HTTP date); None when absent or unreadable. Never negative."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(slots=True)
class _OutputChunk:
    at: float  # arrival, perf_counter seconds
    text: str  # all output text of the chunk
    finish: bool  # carried a finish reason
    wire_tokens: int | None  # tokens the wire says the chunk carries (logprobs entries)
    usage_step: int | None  # the step in cumulative usage, where usage comes with every chunk


REPLACEMENT_CHARACTER = "\ufffd"  # what a decoder writes for bytes that do not make whole UTF-8 characters


def apportion(weights: list[int], total: int) -> list[int]:
    """Integers proportional to `weights` that add up to `total` (largest remainders get the rest)."""
    scale = total / sum(weights)
    shares = [w * scale for w in weights]
    counts = [int(x) for x in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: shares[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


class TokenTimeline:
    """Arrival times of the output tokens of one stream, and the client's own count of them, by the
    rules in this module's docstring."""

    __slots__ = ("_counter", "_chunks", "_usage_seen", "_cumulative", "first_output_at")

    def __init__(self, counter: TokenCounter | None = None):
        self._counter = counter
        self._chunks: list[_OutputChunk] = []
        self._usage_seen = False  # an earlier event reported completion_tokens (usage in every chunk)
        self._cumulative = 0  # the last completion_tokens reported
        self.first_output_at: float | None = None  # first chunk with output text or wire tokens

    def add(self, at: float, event: StreamEvent) -> None:
        """Take one interpreted event that arrived at `at`."""
        reported = event.usage.completion_tokens if event.usage is not None else None
        if event.carries_output:
            step = max(0, reported - self._cumulative) if reported is not None and self._usage_seen else None
            text = event.output_text
            self._chunks.append(_OutputChunk(at, text, event.finish_reason is not None, event.tokens, step))
            if self.first_output_at is None and (text or event.tokens or step):
                self.first_output_at = at
        if reported is not None:
            self._usage_seen = True
            self._cumulative = reported

    def client_counts(self) -> tuple[list[int], bool]:
        """Per output chunk, the tokens the client counts on its own (rule 1 of the module
        docstring; never from the server's usage), and False where the token counter failed."""
        counts: list[int] = []
        counted = True
        pending = 0  # empty-text chunks since the last chunk with text: bytes of a character not yet whole
        for chunk in self._chunks:
            if chunk.wire_tokens is not None:
                counts.append(chunk.wire_tokens)
                pending = 0
            elif not chunk.text:
                counts.append(1)
                pending += 1
            else:
                k = 1
                if self._counter is not None:
                    estimate = self._estimate(chunk.text)
                    if estimate is None:
                        counted = False
                    else:  # this chunk and the empty ones before it carried at least `estimate` tokens
                        k = max(1, estimate - pending)
                counts.append(k)
                pending = 0
        return counts, counted

    def resolve(self, completion_tokens: int | None) -> tuple[list[float], int | None]:
        """(token_times, client_tokens) given the server's final `completion_tokens` (None if unknown)."""
        chunks = self._chunks
        counts, counted = self.client_counts()
        finish_only = bool(chunks) and chunks[-1].finish and not chunks[-1].text and chunks[-1].wire_tokens is None
        if finish_only and completion_tokens != sum(counts):
            counts[-1] = 0  # a trailing empty chunk with the finish reason: no token, unless usage counts it
        client = sum(counts) if counted else None
        if completion_tokens and chunks:
            if completion_tokens == len(chunks):
                return [c.at for c in chunks], client
            if completion_tokens == len(chunks) - 1 and finish_only:
                return [c.at for c in chunks[:-1]], client
        wire = [c.wire_tokens if c.wire_tokens is not None else c.usage_step for c in chunks]
        weights = [n if k is None else k for k, n in zip(wire, counts, strict=True)]
        if all(k is None for k in wire) and completion_tokens and sum(weights) and sum(weights) != completion_tokens:
            # The client's count is not the server's (chunks that carried several tokens, text that
            # re-tokenizes otherwise): the timings keep the server's total, shared over the chunks
            # in proportion to the client's counts.
            weights = apportion(weights, completion_tokens)
        times = [chunk.at for chunk, k in zip(chunks, weights, strict=True) for _ in range(k)]
        return times, client

    def _estimate(self, text: str) -> int | None:
        """The counter's count of one chunk's text: where the text holds replacement characters
        (bytes lost in decoding, so re-tokenizing cannot give the server's tokens back), the
        pieces between them are counted and each replacement character counts one token."""
        if REPLACEMENT_CHARACTER not in text:
            return self._count(text)
        total = text.count(REPLACEMENT_CHARACTER)
        for piece in text.split(REPLACEMENT_CHARACTER):
            if piece:
                n = self._count(piece)
                if n is None:
                    return None
                total += n
        return total

    def _count(self, text: str) -> int | None:
        try:
            return int(self._counter(text))  # type: ignore[misc]
        except Exception:  # a broken counter costs the client count, never the request
            return None


class StreamingClient:
    """Sends streamed requests to one target over a shared aiohttp session.

    `target` gives base_url, api/kind (hence the wire protocol), timeouts and the API key (read
    once, here). `token_counter(text) -> int` counts tokens client-side (e.g. the target
    tokenizer's encode length); pass None when there is no tokenizer. `keep_output_text` keeps the
    answer text (content deltas) in `StreamOutcome.output_text`. `protocol` overrides the wire
    protocol chosen from the target.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        target: TargetConfig,
        *,
        token_counter: TokenCounter | None = None,
        keep_output_text: bool = False,
        protocol: WireProtocol | None = None,
    ):
        if not target.base_url:
            raise ValueError(f"target {target.name} has no base_url yet")
        self._session = session
        self.base_url = target.base_url
        self.protocol = protocol or protocol_for_target(target)
        self.limits = StreamLimits(target.timeouts.connect_s, target.timeouts.first_token_s, target.timeouts.total_s)
        self.token_counter = token_counter
        self.keep_output_text = keep_output_text
        self._api_key = target.api_key()
        self.scrubber = Scrubber([self._api_key])
        self._http_timeout = aiohttp.ClientTimeout(
            total=None, connect=self.limits.connect_s, sock_connect=self.limits.connect_s
        )

    async def send(self, body: dict) -> StreamOutcome:
        """Send one canonical (OpenAI-shaped) request body and follow its stream to the end."""
        outcome = StreamOutcome()
        try:
            request = self.protocol.build_request(body, self._api_key)
            payload = json.dumps(request.body).encode()
        except (RequestNotTranslatable, TypeError, ValueError) as exc:
            outcome.status = "http_error"
            outcome.error = self.scrubber.cut(f"request not sent: {exc}", ERROR_TEXT_LIMIT)
            return outcome
        exchange = _Exchange(self, outcome)
        loop = asyncio.get_running_loop()
        limits = self.limits
        first_deadline = min(limits.first_token_s, limits.total_s)
        outcome.sent = time.perf_counter()
        try:
            async with asyncio.timeout(first_deadline) as deadline:
                exchange.deadline = deadline
                exchange.total_deadline_loop = loop.time() + limits.total_s
                await exchange.run(self.base_url + request.path, request.headers, payload)
        except aiohttp.ServerTimeoutError as exc:  # aiohttp's own connect limit
            exchange.fail("timeout", f"connect timeout: no connection within {limits.connect_s:g} s ({exc})")
        except TimeoutError:
            if exchange.first_output_at is None and limits.first_token_s < limits.total_s:
                exchange.fail("timeout", f"first-token timeout: no output token within {limits.first_token_s:g} s")
            else:
                exchange.fail("timeout", f"total timeout: stream not finished within {limits.total_s:g} s")
        except asyncio.CancelledError as exc:  # the caller's reason, where it gave one (Task.cancel(msg))
            exchange.fail("cancelled", f"{exc.args[0]} while in flight" if exc.args else "cancelled by the caller")
        except aiohttp.ClientPayloadError as exc:
            exchange.fail("connection_error", f"connection broken mid-stream: {exc}")
        except aiohttp.ClientConnectorError as exc:
            exchange.fail("connection_error", f"cannot connect: {exc}")
        except aiohttp.ServerDisconnectedError as exc:
            exchange.fail("connection_error", f"server disconnected: {exc}")
        except (aiohttp.ClientError, OSError) as exc:
            exchange.fail("connection_error", f"{type(exc).__name__}: {exc}")
        except WireProtocolError as exc:
            exchange.fail("stream_error", str(exc))
        except Exception as exc:  # nothing may escape: an unforeseen failure is still one outcome
            exchange.fail("stream_error", f"client error: {type(exc).__name__}: {exc}")
        exchange.finish()
        return outcome


@dataclass(frozen=True)
class StreamAttempt:
    """What one request's stream has shown so far, whatever does the I/O (this module's asyncio
    client; loadgen/locust/gevent_stream_client.py's gevent client for Locust): the events taken in, the
    status once decided (`settled`: later failures, e.g. while draining, do not change it), and the
    outcome's token timings filled in at the end. Subclasses add their I/O and may override
    `first_output_arrived` (where the first-token timeout ends)."""

    __slots__ = ("protocol", "outcome", "timeline", "settled", "ended", "content", "scrubber")

    def __init__(
        self,
        outcome: StreamOutcome,
        protocol: WireProtocol,
        token_counter: TokenCounter | None,
        keep_output_text: bool,
        scrubber: Scrubber,
    ):
        self.protocol = protocol
        self.outcome = outcome
        self.timeline = TokenTimeline(token_counter)
        self.settled = False
        self.ended = False  # [DONE] seen
        self.content: list[str] | None = [] if keep_output_text else None
        self.scrubber = scrubber

    @property
    def first_output_at(self) -> float | None:
        return self.timeline.first_output_at

    def first_output_arrived(self) -> None:
        """Called once, when the first output token arrives."""

    def fail(self, status: str, error: str) -> None:
        if self.settled:
            return
        self.outcome.status = status
        self.outcome.error = self.scrubber.cut(error, ERROR_TEXT_LIMIT)
        self.settled = True

    def take(self, events: Iterable, at: float) -> None:
        """Take the SSE events completed by one read, all stamped `at`; stops at the first event
        that settles the outcome ([DONE], or an error in the stream)."""
        protocol, outcome, timeline = self.protocol, self.outcome, self.timeline
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
                    self.first_output_arrived()
                if self.content is not None and event.content:
                    self.content.append(event.content)
            elif event.usage is not None:
                timeline.add(at, event)
            if event.done:
                self.ended = True
                outcome.done = at
                outcome.status = "ok"
                self.settled = True

    def body_ended(self, inside_event: bool) -> None:
        """The body ended without [DONE]: ok after a finish reason, else a broken stream."""
        if self.settled:
            return
        if self.outcome.finish_reason is not None:
            self.outcome.status = "ok"
            self.outcome.done = time.perf_counter()
            self.settled = True
        else:
            where = " (inside an unterminated event)" if inside_event else ""
            self.fail("stream_error", f"stream ended without [DONE] or a finish reason{where}")

    def body_message(self, body: bytes) -> str:
        """The message in a response body read up to ERROR_BODY_LIMIT bytes, scrubbed before it is
        read: a body cut at the limit may end in the first part of a key, which no later scrub
        would match (and blanks collapsed before it could bring it to the message's front)."""
        text = body.decode("utf-8", "replace")
        scrubbed = self.scrubber.head(text) if len(body) >= ERROR_BODY_LIMIT else self.scrubber.text(text)
        return self.protocol.error_message(scrubbed)

    def not_an_event_stream(self, body: bytes) -> None:
        self.fail("stream_error", f"server answered JSON, not an event stream: {self.body_message(body)}")

    def http_error(self, status: int, reason: str | None, headers: Mapping[str, str]) -> None:
        """An HTTP error status: the outcome and the wait the server asked for (Retry-After, else
        the provider's rate-limit headers). `http_error_body` adds the server's message."""
        retry_after = parse_retry_after(headers)
        self.outcome.retry_after_s = retry_after if retry_after is not None else rate_limit_wait_s(headers)
        self.fail("http_error", f"HTTP {status} {reason or ''}".rstrip())

    def http_error_body(self, status: int, body: bytes) -> None:
        message = self.body_message(body)
        if message:
            self.outcome.error = self.scrubber.cut(f"HTTP {status}: {message}", ERROR_TEXT_LIMIT)

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
            outcome.output_text = self.scrubber.text("".join(self.content))


class _Exchange(StreamAttempt):
    """One request on aiohttp: its deadlines and its reads (not shared between requests)."""

    __slots__ = ("client", "deadline", "total_deadline_loop")

    def __init__(self, client: StreamingClient, outcome: StreamOutcome):
        super().__init__(outcome, client.protocol, client.token_counter, client.keep_output_text, client.scrubber)
        self.client = client
        self.deadline: asyncio.Timeout | None = None
        self.total_deadline_loop = 0.0

    def first_output_arrived(self) -> None:
        """From the first output token on, only the total limit applies."""
        if self.deadline is not None:
            self.deadline.reschedule(self.total_deadline_loop)

    async def run(self, url: str, headers: dict[str, str], payload: bytes) -> None:
        client = self.client
        async with client._session.post(
            url, data=payload, headers=headers, timeout=client._http_timeout, allow_redirects=False
        ) as response:
            self.outcome.http_status = response.status
            if response.status >= 300:
                self.http_error(response.status, response.reason, response.headers)
                self.http_error_body(response.status, await _read_bounded(response.content, ERROR_BODY_LIMIT))
                return
            if "json" in response.headers.get("Content-Type", ""):
                self.not_an_event_stream(await _read_bounded(response.content, ERROR_BODY_LIMIT))
                return
            parser = SSEParser()
            content = response.content
            stamp = read_stamp(response)
            while not self.settled:
                data = await content.readany()
                if not data:
                    break
                self.take(parser.feed(data), stamp.now())  # the read's arrival, before any parsing
            if self.ended:
                await self._drain(content)
            else:
                self.body_ended(parser.pending)

    async def _drain(self, content: aiohttp.StreamReader) -> None:
        """Read what follows [DONE] (normally just the body's end) so the connection can be reused;
        bounded, and nothing that happens here changes the outcome."""
        if content.at_eof():
            return
        try:
            async with asyncio.timeout(DRAIN_AFTER_DONE_S):
                while await content.readany():
                    pass
        except (TimeoutError, aiohttp.ClientError, OSError):
            pass


async def _read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes:
    """Up to `limit` bytes of a body, to its end."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await content.readany()
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)[:limit]
