"""OpenAI streaming: chat completions (`chat.completion.chunk`) and completions (`text_completion`).

Requests get `stream: true` and, unless switched off, `stream_options: {include_usage: true}`, so
the server's usage arrives in a final chunk whose `choices` is empty. The stream ends with
`data: [DONE]`. Field names read, besides OpenAI's own: `reasoning_content` (vLLM, DeepSeek) and
`reasoning` (newer vLLM, OpenRouter, Groq) for reasoning deltas; vLLM's older error shape
`{"object": "error", "message": ...}`; usage in every chunk (vLLM `continuous_usage_stats`).
"""

from __future__ import annotations

import json
from abc import abstractmethod

from shadowreplay.replay.clients.protocols.base import (
    StreamEvent,
    Usage,
    WireProtocol,
    WireProtocolError,
    WireRequest,
    error_text,
)
from shadowreplay.replay.clients.sse import SSEEvent

DONE_MARKER = "[DONE]"
_REASONING_FIELDS = ("reasoning_content", "reasoning")


def _joined(parts: list[str | None]) -> str | None:
    """Concatenation of the given texts; None when none was given (so "" stays distinct from absent)."""
    present = [p for p in parts if p is not None]
    return "".join(present) if present else None


class _OpenAIStreaming(WireProtocol):
    path: str

    def __init__(self, include_usage: bool = True):
        self.include_usage = include_usage

    def build_request(self, body: dict, api_key: str | None) -> WireRequest:
        streamed = dict(body)
        streamed["stream"] = True
        if self.include_usage:
            streamed["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return WireRequest(self.path, headers, streamed)

    def interpret(self, event: SSEEvent) -> StreamEvent | None:
        data = event.data
        if data.strip() == DONE_MARKER:
            return StreamEvent(done=True)
        try:
            chunk = json.loads(data)
        except ValueError:
            raise WireProtocolError(f"invalid JSON in stream event: {data!r}") from None
        if not isinstance(chunk, dict):
            raise WireProtocolError(f"stream event is not a JSON object: {data!r}")
        if chunk.get("error") or chunk.get("object") == "error":
            return StreamEvent(error=error_text(chunk) or data)
        result = StreamEvent()
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            result.usage = Usage(usage.get("prompt_tokens"), usage.get("completion_tokens"))
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise WireProtocolError(f"`choices` is not a list in stream event: {data!r}")
        for choice in choices:
            if not isinstance(choice, dict):
                raise WireProtocolError(f"a choice is not an object in stream event: {data!r}")
            self._read_choice(choice, result)
            if choice.get("finish_reason"):
                result.finish_reason = choice["finish_reason"]
        return result

    @abstractmethod
    def _read_choice(self, choice: dict, into: StreamEvent) -> None:
        """Add what one element of `choices` carries to `into`."""


class OpenAIChat(_OpenAIStreaming):
    """POST {base_url}/chat/completions, `chat.completion.chunk` events."""

    name = "openai-chat"
    path = "/chat/completions"

    def _read_choice(self, choice: dict, into: StreamEvent) -> None:
        delta = choice.get("delta") or {}
        content = _joined([delta.get("content"), delta.get("refusal")])
        reasoning = next((delta[f] for f in _REASONING_FIELDS if delta.get(f) is not None), None)
        tool_call = None
        for call in delta.get("tool_calls") or ():
            function = call.get("function") or {}
            tool_call = _joined([tool_call, function.get("name"), function.get("arguments")])
        if "role" in delta and not content and not reasoning and not tool_call:
            return  # the role-only opening chunk: no output
        into.content = _joined([into.content, content])
        into.reasoning = _joined([into.reasoning, reasoning])
        into.tool_call = _joined([into.tool_call, tool_call])
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
            into.tokens = (into.tokens or 0) + len(logprobs["content"])


class OpenAICompletions(_OpenAIStreaming):
    """POST {base_url}/completions, `text_completion` events."""

    name = "openai-completions"
    path = "/completions"

    def _read_choice(self, choice: dict, into: StreamEvent) -> None:
        into.content = _joined([into.content, choice.get("text")])
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("tokens"), list):
            into.tokens = (into.tokens or 0) + len(logprobs["tokens"])
