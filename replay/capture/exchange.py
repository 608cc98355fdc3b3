"""One captured exchange, as logic without I/O: a request and its response, the bytes as the proxy
passed them on, into one traffic-log row with production's own timings.

The proxy (replay/capture/proxy.py) owns the sockets and the clock; a `CapturedExchange` is made
from the request (its path, headers and body), fed each response chunk with the moment it was
passed on, and finished with the status: `row()` is then the traffic-log row (replay/schemas/
traffic_log.py) plus `prod_ttft_ms`, `prod_e2e_ms`, `prod_status` and `prod_http_status`
(CAPTURE_COLUMNS). The chunks are only kept while the response streams (the proxy's event loop
does nothing else with them) and read when the row is made, in the recorder's thread. What it
reads of the response, through the same SSE parser and wire protocols the replay clients use
(replay/clients/sse.py, replay/clients/protocols/): the answer text (`response_text`), production's
usage as token counts, the first output token's time. Requests it does not record (other paths,
bodies that are not JSON objects) are `recordable` False and never reach the log.

Recorded APIs: OpenAI chat and completions (`/chat/completions`, `/completions`, streamed or not)
and Anthropic Messages (`/messages`), whose system prompt and content blocks are written as
OpenAI-shaped messages (the traffic log's one shape: a text block as a text part). `params` holds the
request's other fields but `model` and `stream` (the replay's target chooses them). The request
id is the client's `X-Request-Id` where it sends one, else a fresh one; the session and the tag
come from the headers or body fields `CaptureFields` names.
"""

from __future__ import annotations

import json
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from shadowreplay.replay.clients.protocols import AnthropicMessages, OpenAIChat, OpenAICompletions, WireProtocol
from shadowreplay.replay.clients.protocols.anthropic import anthropic_prompt_tokens
from shadowreplay.replay.clients.protocols.base import WireProtocolError
from shadowreplay.replay.clients.sse import SSEParser

CAPTURE_COLUMNS = ("prod_ttft_ms", "prod_e2e_ms", "prod_status", "prod_http_status")
"""Production's own timings and outcome, beside the traffic log's columns (readers ignore columns they do
not know). `prod_status` is in the results' vocabulary (replay/schemas/results.py STATUSES), so that
`--baseline production` reads production as it reads a replayed side: `ok` (a whole answer),
`http_error` (the upstream answered 4xx/5xx), `connection_error` (the upstream could not be reached),
`stream_error` (its answer broke off), `cancelled` (the client left first); `prod_http_status` is the
status line the client got (502 and 499 where the proxy answered or the client left)."""

ROUTES: dict[str, tuple[str, type[WireProtocol]]] = {
    "/chat/completions": ("chat", OpenAIChat),
    "/completions": ("completions", OpenAICompletions),
    "/messages": ("chat", AnthropicMessages),
}
"""Path endings recorded, with the traffic log's `api` and the wire protocol that reads their streams."""

DROPPED_PARAMS = frozenset({"model", "stream", "messages", "prompt", "system"})
"""Request fields not kept in `params`: the replay's target sets them, or they are columns of their own."""

KEY_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "proxy-authorization", "cookie"})
"""Headers that carry the client's credentials: forwarded to the upstream, never kept by an exchange."""

DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""Content encodings the exchange reads through (the client gets the bytes as they were); another
(br, zstd) leaves the answer unrecorded: `response_text` null."""


class CaptureFields(BaseModel):
    """Where the session id and the tag of a request are found: a header (case-insensitive) first,
    then a body field (a dotted path, e.g. `metadata.user_id`); `tag_from_path`: without either, the
    tag is the request's path (`/v1/chat/completions`)."""

    model_config = ConfigDict(extra="forbid")

    session_header: str | None = "x-session-id"
    session_field: str | None = "user"
    tag_header: str | None = "x-shadowreplay-tag"
    tag_field: str | None = None
    tag_from_path: bool = False

    @field_validator("session_header", "tag_header")
    @classmethod
    def _not_a_key(cls, value: str | None) -> str | None:
        if value is not None and value.lower() in KEY_HEADERS:
            raise ValueError(f"{value} carries the client's credentials; it is never recorded")
        return value

    def session_of(self, headers: dict[str, str], body: dict[str, Any]) -> str | None:
        return _found(headers, body, self.session_header, self.session_field)

    def tag_of(self, headers: dict[str, str], body: dict[str, Any], path: str) -> str | None:
        return _found(headers, body, self.tag_header, self.tag_field) or (path if self.tag_from_path else None)


def _found(headers: dict[str, str], body: dict[str, Any], header: str | None, dotted: str | None) -> str | None:
    if header:
        value = headers.get(header.lower())
        if value:
            return value
    if dotted:
        node: Any = body
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, str | int) and not isinstance(node, bool) and str(node):
            return str(node)
    return None


def route_of(path: str) -> tuple[str, type[WireProtocol]] | None:
    """The recorded API of a request path (`/v1/chat/completions`), or None for a path not recorded."""
    for ending, route in ROUTES.items():
        if path.rstrip("/").endswith(ending):
            return route
    return None


def anthropic_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """An Anthropic Messages body's system prompt and messages as OpenAI-shaped messages: a string
    stays a string, text blocks become text parts, other blocks (images, tool use) are kept as they are."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _content(system)})
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            messages.append({**message, "content": _content(message.get("content"))})
    return messages


def _content(content: Any) -> Any:
    if not isinstance(content, list):
        return content
    return [
        {"type": "text", "text": block.get("text", "")}
        if isinstance(block, dict) and block.get("type") == "text"
        else block
        for block in content
    ]


@dataclass
class CapturedExchange:
    """One request and its response (this module's docstring). Times are seconds of the proxy's
    monotonic clock; `arrival_us` is the wall-clock arrival in microseconds since the epoch."""

    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    arrival_us: int
    received_s: float  # monotonic, when the request was read
    fields: CaptureFields = field(default_factory=CaptureFields)
    status: int | None = None
    broken: str | None = None  # the proxy's word when the exchange did not end normally (CAPTURE_COLUMNS)
    sampled: bool = True  # kept by the capture's sampling (decided when the request arrived)
    request_id: str = field(default="", init=False)
    first_token_s: float | None = None
    done_s: float | None = None
    _parsed: dict[str, Any] | None = field(default=None, init=False)
    _route: tuple[str, type[WireProtocol]] | None = field(default=None, init=False)
    _protocol: WireProtocol | None = field(default=None, init=False)
    _sse: SSEParser | None = field(default=None, init=False)
    _streamed: bool = field(default=False, init=False)
    _decoder: Any = field(default=None, init=False)  # zlib decompressor of a compressed response
    _unreadable: bool = field(default=False, init=False)  # an encoding we do not read: no answer recorded
    _chunks: list[tuple[bytes, float]] = field(default_factory=list, init=False)  # as passed on, with when
    _response_read: bool = field(default=False, init=False)
    _plain: list[bytes] = field(default_factory=list, init=False)  # a response that is not a stream
    _text: list[str] = field(default_factory=list, init=False)
    _prompt_tokens: int | None = field(default=None, init=False)
    _completion_tokens: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.headers = {name: value for name, value in self.headers.items() if name not in KEY_HEADERS}
        self.request_id = self.headers.get("x-request-id") or uuid.uuid4().hex
        self._route = route_of(self.path)
        if self._route is None:
            return
        try:
            parsed = json.loads(self.body)
        except ValueError:
            return
        if isinstance(parsed, dict):
            self._parsed = parsed
            self._protocol = self._route[1]()

    @property
    def recordable(self) -> bool:
        """A request of a recorded API with a JSON object body: it becomes a row."""
        return self._parsed is not None

    def response_started(self, status: int, content_type: str, content_encoding: str = "") -> None:
        """The upstream's status line, content type and encoding, before any body byte."""
        self.status = status
        self._streamed = content_type.split(";")[0].strip().lower() == "text/event-stream"
        if self._streamed:
            self._sse = SSEParser()
        encoding = content_encoding.strip().lower()
        if encoding in DECODERS:
            self._decoder = zlib.decompressobj(DECODERS[encoding])
        elif encoding not in ("", "identity"):
            self._unreadable = True

    def feed(self, chunk: bytes, now_s: float) -> None:
        """A response chunk as it was passed on to the client, at `now_s`: kept, read later (`row`), so the
        proxy's event loop spends nothing on it beyond a list append."""
        if self.recordable and not self._unreadable:
            self._chunks.append((chunk, now_s))

    def finish(self, now_s: float) -> None:
        """The response ended (its last byte passed on, or the upstream's connection lost) at `now_s`."""
        self.done_s = now_s

    def _read_response(self) -> None:
        """The kept chunks read, once: decoded, parsed as SSE events through the wire protocol (answer,
        usage, the first output token's time: the time its chunk was passed on), or as a JSON body."""
        if self._response_read:
            return
        self._response_read = True
        for chunk, at_s in self._chunks:
            if self._decoder is not None:
                try:
                    chunk = self._decoder.decompress(chunk)
                except zlib.error:
                    self._unreadable = True
                    break
            if self._sse is None:
                self._plain.append(chunk)
            else:
                self._read_events(chunk, at_s)
        self._chunks = []
        if self._sse is None and self._plain and not self._unreadable and self.status is not None and self.status < 400:
            self._read_plain(b"".join(self._plain))

    def _read_events(self, chunk: bytes, at_s: float) -> None:
        assert self._sse is not None and self._protocol is not None
        for event in self._sse.feed(chunk):
            try:
                found = self._protocol.interpret(event)
            except WireProtocolError:
                continue  # what production's client saw, passed on as it was; nothing to record
            if found is None:
                continue
            if found.carries_output and found.output_text and self.first_token_s is None:
                self.first_token_s = at_s
            if found.content:
                self._text.append(found.content)
            if found.usage is not None:
                self._prompt_tokens = found.usage.prompt_tokens or self._prompt_tokens
                self._completion_tokens = found.usage.completion_tokens or self._completion_tokens

    def _read_plain(self, body: bytes) -> None:
        """A response that is not a stream: the answer and usage of an OpenAI or Anthropic JSON body."""
        try:
            parsed = json.loads(body)
        except ValueError:
            return
        if not isinstance(parsed, dict):
            return
        found = parsed.get("usage")
        usage: dict[str, Any] = found if isinstance(found, dict) else {}
        if self._protocol is not None and isinstance(self._protocol, AnthropicMessages):
            blocks = parsed.get("content") or []
            self._text = [b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text"]
            self._prompt_tokens, self._completion_tokens = anthropic_prompt_tokens(usage), usage.get("output_tokens")
            return
        choices = parsed.get("choices") or []
        first = choices[0] if choices and isinstance(choices[0], dict) else {}
        message = first.get("message") if isinstance(first.get("message"), dict) else {}
        text = message.get("content") if message else first.get("text")
        self._text = [text] if isinstance(text, str) else []
        self._prompt_tokens, self._completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")

    def request_fields(self) -> dict[str, Any]:
        """The request's own columns of its traffic-log row (known when it arrives: what `--mirror` sends)."""
        assert self._parsed is not None and self._route is not None, "not a recordable exchange"
        body = self._parsed
        api, protocol = self._route
        if protocol is AnthropicMessages:
            messages: Any = anthropic_messages(body)
        else:
            messages = body.get("messages") if api == "chat" else None
        prompt = body.get("prompt") if api == "completions" else None
        params = {k: v for k, v in body.items() if k not in DROPPED_PARAMS}
        return {
            "request_id": self.request_id,
            "arrival_time": self.arrival_us,
            "session_id": self.session_id,
            "api": api,
            "messages": json.dumps(messages, ensure_ascii=False) if messages is not None else None,
            "prompt": prompt if isinstance(prompt, str) else json.dumps(prompt) if prompt is not None else None,
            "params": json.dumps(params, ensure_ascii=False) if params else None,
            "prefix_block_ids": None,
            "tag": self.fields.tag_of(self.headers, body, self.path),
        }

    @property
    def session_id(self) -> str | None:
        return self.fields.session_of(self.headers, self._parsed) if self._parsed is not None else None

    def row(self) -> dict[str, Any]:
        """The traffic-log row with production's timings (call after `finish`; the recorder's thread
        does: the response is read here)."""
        self._read_response()
        ok = self.status is not None and self.status < 400
        return {
            **self.request_fields(),
            "prompt_tokens": _count(self._prompt_tokens),
            "completion_tokens": _count(self._completion_tokens),
            "response_text": "".join(self._text)
            if ok and not self._unreadable and (self._text or self._streamed)
            else None,
            "reference": None,
            "prod_ttft_ms": _ms(self.first_token_s, self.received_s),
            "prod_e2e_ms": _ms(self.done_s, self.received_s),
            "prod_status": self.broken or ("ok" if ok else "http_error"),
            "prod_http_status": self.status,
        }


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _ms(at: float | None, since: float) -> float | None:
    return None if at is None else (at - since) * 1000.0
