"""The shape of one streaming API on the wire, as a small interface.

A wire protocol turns the canonical request body (OpenAI shape, as replay/requests/builder.py makes
it) into an HTTP request for its API, and reads that API's Server-Sent Events back into
API-neutral `StreamEvent`s. The streaming client (replay/clients/stream_client.py) owns the HTTP, the
clocks and the token accounting; a protocol owns only names and shapes, so adding an API (e.g.
Anthropic Messages: `message_start`, `content_block_delta`, `message_delta`, `error`,
`message_stop`) is one new class here and one entry in `shadowreplay.replay.clients.protocols.protocol_for`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.clients.sse import SSEEvent


class WireProtocolError(ShadowReplayError, ValueError):
    """A stream event that is not what the API sends (invalid JSON, a wrong shape)."""


class RequestNotTranslatable(ShadowReplayError, ValueError):
    """A canonical request that this API cannot express (reported per request, never dropped)."""


@dataclass(frozen=True, slots=True)
class WireRequest:
    """One HTTP request: `path` is appended to the target's base URL; `body` is sent as JSON."""

    path: str
    headers: dict[str, str]
    body: dict


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage as the server reported it so far (either field may be missing)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(slots=True)
class StreamEvent:
    """What one SSE event says, in API-neutral terms.

    Output fields are None when the event does not carry that field at all, and "" when it carries
    the field with empty text (a server streaming one token per event sends "" for a token whose
    bytes end inside a UTF-8 character). A role-only event carries no output field.
    """

    content: str | None = None  # answer text
    reasoning: str | None = None  # reasoning / thinking text
    tool_call: str | None = None  # tool-call names and argument text
    tokens: int | None = None  # output tokens in this event, where the wire says (e.g. logprobs entries)
    usage: Usage | None = None
    finish_reason: str | None = None
    error: str | None = None  # an error object inside the stream
    done: bool = False  # the API's end-of-stream marker ([DONE], message_stop)

    @property
    def carries_output(self) -> bool:
        return self.content is not None or self.reasoning is not None or self.tool_call is not None

    @property
    def output_text(self) -> str:
        """All output text of the event (reasoning, answer, tool calls), for client token counts."""
        return (self.reasoning or "") + (self.content or "") + (self.tool_call or "")


class WireProtocol(ABC):
    """One streaming API. An instance holds no per-request state and serves all of a target's requests."""

    name: ClassVar[str]  # how configs and messages name the API

    @abstractmethod
    def build_request(self, body: dict, api_key: str | None) -> WireRequest:
        """The HTTP request for a canonical body (streaming switched on); may raise
        RequestNotTranslatable. `api_key` goes into a header and nowhere else."""

    @abstractmethod
    def interpret(self, event: SSEEvent) -> StreamEvent | None:
        """What `event` says, or None for events that say nothing (pings); raises
        WireProtocolError for an event this API would never send."""

    def error_message(self, body: bytes | str) -> str:
        """The human message in an error response body (JSON error object, else the text with its
        blanks collapsed); `body` as bytes, or as text already decoded (and scrubbed)."""
        text = (body.decode("utf-8", "replace") if isinstance(body, bytes) else body).strip()
        try:
            parsed = json.loads(text)
        except ValueError:
            return " ".join(text.split())
        return error_text(parsed) or " ".join(text.split())


def error_text(obj: object) -> str | None:
    """The message of an error object in the common shapes: {"error": {"message": ...}},
    {"error": "..."}, {"message": ...} (vLLM's older ErrorResponse), {"detail": ...} (FastAPI),
    Anthropic's {"type": "error", "error": {"type": ..., "message": ...}}."""
    if isinstance(obj, str):
        return obj
    if not isinstance(obj, dict):
        return None
    inner = obj.get("error")
    if isinstance(inner, dict):
        message = inner.get("message")
        kind = inner.get("type") or inner.get("code")
        if message and kind and str(kind) not in str(message):
            return f"{kind}: {message}"
        return str(message or kind or json.dumps(inner))
    if isinstance(inner, str) and inner:
        return inner
    for key in ("message", "detail"):
        value = obj.get(key)
        if value:
            return value if isinstance(value, str) else json.dumps(value)
    return None
