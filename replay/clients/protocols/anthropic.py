"""Anthropic Messages API streaming: `POST {base_url}/v1/messages` with `stream: true`.

Request: headers `x-api-key` (the key), `anthropic-version` and, when configured, `anthropic-beta`.
The canonical (OpenAI-shaped) body is translated field by field (`translate_body`):
- leading `system`/`developer` messages -> the top-level `system` (a system message after the
  conversation has started has no place in the Messages API and is refused);
- `max_completion_tokens` or `max_tokens` -> `max_tokens`, which Anthropic requires: a request
  without one gets the target's `default_max_tokens`;
- `stop` -> `stop_sequences`; `temperature` (Anthropic: 0..1), `top_p`, `top_k` as they are;
  `user` -> `metadata.user_id`;
- content parts: text, and images (`image_url` with a data: URL -> a base64 source, with an
  http(s) URL -> a url source);
- assistant `tool_calls` -> `tool_use` blocks; `tool` messages -> `tool_result` blocks in a user
  turn; function `tools` -> `{name, description, input_schema}`; `tool_choice` auto / required /
  none / a named function -> auto / any / none / tool; `parallel_tool_calls: false` ->
  `disable_parallel_tool_use`;
- Anthropic's own fields (`thinking`, `top_k`, `stop_sequences`, `metadata` with `user_id`)
  pass through, so a target's `extra_body` may set them;
- bookkeeping that does not change what is generated is dropped (`stream`, `stream_options`,
  `store`, OpenAI's `metadata`, `service_tier` auto/default, neutral defaults such as `n: 1`,
  `presence_penalty: 0`, `response_format: {type: text}`);
- anything else (`n` > 1, `logit_bias`, `logprobs`, penalties, `seed`, `response_format` json,
  `reasoning_effort`, vLLM's `ignore_eos`/`min_tokens`, audio or file parts, non-function tools,
  unknown fields) raises RequestNotTranslatable naming the field, unless the target lists the
  field in `ignore_fields`: the request gets its own result row with the reason.

Stream (Anthropic's SSE; the JSON's `type` repeats the event name): `message_start` (the message
with `usage.input_tokens`, plus cache read/creation tokens: prompt tokens are their sum),
`content_block_start` / `content_block_delta` / `content_block_stop` (deltas `text_delta`,
`thinking_delta`, `input_json_delta`; `signature_delta` and `citations_delta` carry no tokens),
`message_delta` (`delta.stop_reason` and cumulative `usage.output_tokens`), `message_stop` (the
end), `ping`, and `error` (e.g. `overloaded_error`). Unknown event types are ignored, as Anthropic
asks of clients. A `tool_use` block's start carries the tool's name: output, as OpenAI's first
tool-call delta is. Stop reasons map to OpenAI's finish reasons (STOP_REASONS) so rows of
different targets compare.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from shadowreplay.replay.clients.protocols.base import (
    RequestNotTranslatable,
    StreamEvent,
    Usage,
    WireProtocol,
    WireProtocolError,
    WireRequest,
    error_text,
)
from shadowreplay.replay.clients.sse import SSEEvent

DEFAULT_VERSION = "2023-06-01"

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Fields with no effect on what is generated: dropped. (`user` and `metadata` are handled apart.)
_BOOKKEEPING = frozenset({"stream", "stream_options", "store"})
# Fields whose neutral value is dropped and any other value refused, with the reason.
_NEUTRAL: dict[str, tuple[tuple, str]] = {
    "n": ((None, 1), "Anthropic returns one choice per request"),
    "logit_bias": ((None, {}), "Anthropic has no logit bias"),
    "logprobs": ((None, False), "Anthropic returns no log probabilities"),
    "top_logprobs": ((None, 0), "Anthropic returns no log probabilities"),
    "presence_penalty": ((None, 0, 0.0), "Anthropic has no presence penalty"),
    "frequency_penalty": ((None, 0, 0.0), "Anthropic has no frequency penalty"),
    "repetition_penalty": ((None, 1, 1.0), "Anthropic has no repetition penalty"),
    "response_format": ((None, {"type": "text"}), "Anthropic has no JSON mode in the Messages API"),
    "service_tier": ((None, "auto", "default"), "Anthropic's tiers differ from OpenAI's"),
    "parallel_tool_calls": ((None, True, False), ""),  # False is translated with tool_choice
}
_REFUSED = {
    "seed": "Anthropic has no seeded sampling",
    "reasoning_effort": "set Anthropic's `thinking` in the target's extra_body instead",
    "ignore_eos": "a vLLM extension; Anthropic cannot force output lengths",
    "min_tokens": "a vLLM extension; Anthropic cannot force output lengths",
    "functions": "legacy function calling; give `tools`",
    "function_call": "legacy function calling; give `tool_choice`",
    "modalities": "Anthropic answers text only",
    "audio": "Anthropic answers text only",
    "prediction": "Anthropic has no predicted outputs",
    "web_search_options": "no Anthropic equivalent in a plain request",
}
_HANDLED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "stop_sequences",
        "tools",
        "tool_choice",
        "user",
        "metadata",
        "thinking",
        "system",
    }
)


def anthropic_prompt_tokens(usage: dict) -> int | None:
    """All input tokens: uncached plus cache reads and cache writes (Anthropic counts them apart)."""
    parts = [usage.get(k) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")]
    if parts[0] is None:
        return None
    return sum(int(p) for p in parts if isinstance(p, (int, float)))


class AnthropicMessages(WireProtocol):
    """POST {base_url}/v1/messages, Anthropic's event stream."""

    name = "anthropic-messages"
    path = "/v1/messages"

    def __init__(
        self,
        version: str = DEFAULT_VERSION,
        beta: Iterable[str] = (),
        default_max_tokens: int = 4096,
        ignore_fields: Iterable[str] = (),
    ):
        self.version = version
        self.beta = tuple(beta)
        self.default_max_tokens = default_max_tokens
        self.ignore_fields = frozenset(ignore_fields)

    # -- request -----------------------------------------------------------------------------
    def build_request(self, body: dict, api_key: str | None) -> WireRequest:
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "anthropic-version": self.version,
        }
        if self.beta:
            headers["anthropic-beta"] = ",".join(self.beta)
        if api_key:
            headers["x-api-key"] = api_key
        return WireRequest(self.path, headers, {**self.translate_body(body), "stream": True})

    def translate_body(self, body: dict) -> dict:
        """The Messages API body for a canonical body (rules in the module docstring)."""
        body = {k: v for k, v in body.items() if k not in self.ignore_fields}
        for field, value in body.items():
            if field in _BOOKKEEPING or field in _HANDLED:
                continue
            if field in _NEUTRAL:
                neutral, why = _NEUTRAL[field]
                if value not in neutral:
                    raise RequestNotTranslatable(f"{field}={json.dumps(value)[:60]}: {why}")
                continue
            if field in _REFUSED:
                raise RequestNotTranslatable(f"{field}: {_REFUSED[field]}")
            raise RequestNotTranslatable(f"{field}: not a field the Anthropic translation knows")
        if "model" not in body:
            raise RequestNotTranslatable("model: missing")
        system, messages = self._messages(body.get("messages"))
        if body.get("system") is not None:
            system = body["system"] if system is None else _joined_system(body["system"], system)
        out: dict = {"model": body["model"], "messages": messages}
        if system is not None:
            out["system"] = system
        out["max_tokens"] = self._max_tokens(body)
        temperature = body.get("temperature")
        if temperature is not None:
            if not 0 <= temperature <= 1:
                raise RequestNotTranslatable(f"temperature={temperature}: Anthropic accepts 0 to 1")
            out["temperature"] = temperature
        for field in ("top_p", "top_k", "thinking"):
            if body.get(field) is not None:
                out[field] = body[field]
        stops = _stop_sequences(body)
        if stops:
            out["stop_sequences"] = stops
        metadata = _metadata(body)
        if metadata:
            out["metadata"] = metadata
        tools = body.get("tools")
        if tools:
            out["tools"] = [_tool(i, t) for i, t in enumerate(tools)]
            tool_choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
            if tool_choice is not None:
                out["tool_choice"] = tool_choice
        elif body.get("tool_choice") not in (None, "none", "auto"):
            raise RequestNotTranslatable("tool_choice: given without tools")
        return out

    def _max_tokens(self, body: dict) -> int:
        for field in ("max_completion_tokens", "max_tokens"):
            value = body.get(field)
            if value is not None:
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise RequestNotTranslatable(f"{field}={value!r}: must be a positive integer")
                return value
        return self.default_max_tokens

    def _messages(self, messages) -> tuple[str | list | None, list[dict]]:
        if not isinstance(messages, list) or not messages:
            raise RequestNotTranslatable("messages: a non-empty list is required")
        system_parts: list[str] = []
        out: list[dict] = []
        started = False
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(message, dict):
                raise RequestNotTranslatable(f"{where}: not an object")
            role = message.get("role")
            if role in ("system", "developer"):
                if started:
                    raise RequestNotTranslatable(
                        f"{where}.role={role}: Anthropic takes system text only before the conversation"
                    )
                system_parts.extend(_text_parts(message.get("content"), where))
                continue
            started = True
            for key in ("audio", "function_call"):
                if message.get(key) is not None:
                    raise RequestNotTranslatable(f"{where}.{key}: no Anthropic equivalent")
            if role == "user":
                out.append({"role": "user", "content": _user_content(message.get("content"), where)})
            elif role == "assistant":
                out.append({"role": "assistant", "content": _assistant_content(message, where)})
            elif role == "tool":
                result = _tool_result(message, where)
                if out and out[-1]["role"] == "user" and _is_tool_results(out[-1]["content"]):
                    out[-1]["content"].append(result)  # one user turn holds the results of one tool turn
                else:
                    out.append({"role": "user", "content": [result]})
            else:
                raise RequestNotTranslatable(f"{where}.role={role!r}: no Anthropic equivalent")
        if not out:
            raise RequestNotTranslatable("messages: only system messages; Anthropic needs a user turn")
        if not system_parts:
            return None, out
        if len(system_parts) == 1:
            return system_parts[0], out
        return [{"type": "text", "text": t} for t in system_parts], out

    # -- stream ------------------------------------------------------------------------------
    def interpret(self, event: SSEEvent) -> StreamEvent | None:
        try:
            data = json.loads(event.data)
        except ValueError:
            raise WireProtocolError(f"invalid JSON in stream event: {event.data!r}") from None
        if not isinstance(data, dict):
            raise WireProtocolError(f"stream event is not a JSON object: {event.data!r}")
        kind = data.get("type") or event.event
        if kind == "content_block_delta":
            return _delta(data.get("delta"), event.data)
        if kind == "content_block_start":
            return _block_start(data.get("content_block"), event.data)
        if kind == "message_start":
            message = data.get("message")
            if not isinstance(message, dict):
                raise WireProtocolError(f"message_start without a message: {event.data!r}")
            usage = message.get("usage")
            return StreamEvent(usage=Usage(anthropic_prompt_tokens(usage), None)) if isinstance(usage, dict) else None
        if kind == "message_delta":
            result = StreamEvent()
            delta = data.get("delta") or {}
            if delta.get("stop_reason"):
                result.finish_reason = STOP_REASONS.get(delta["stop_reason"], delta["stop_reason"])
            usage = data.get("usage")
            if isinstance(usage, dict):
                result.usage = Usage(anthropic_prompt_tokens(usage), usage.get("output_tokens"))
            return result
        if kind == "message_stop":
            return StreamEvent(done=True)
        if kind == "error":
            return StreamEvent(error=error_text(data) or event.data)
        return None  # ping, content_block_stop, and event types added later


def _delta(delta, raw: str) -> StreamEvent | None:
    if not isinstance(delta, dict):
        raise WireProtocolError(f"content_block_delta without a delta: {raw!r}")
    kind = delta.get("type")
    if kind == "text_delta":
        return StreamEvent(content=delta.get("text", ""))
    if kind == "thinking_delta":
        return StreamEvent(reasoning=delta.get("thinking", ""))
    if kind == "input_json_delta":
        return StreamEvent(tool_call=delta.get("partial_json", ""))
    return None  # signature_delta, citations_delta: no output tokens


def _block_start(block, raw: str) -> StreamEvent | None:
    if not isinstance(block, dict):
        raise WireProtocolError(f"content_block_start without a content_block: {raw!r}")
    kind = block.get("type")
    if kind == "text" and block.get("text"):
        return StreamEvent(content=block["text"])
    if kind == "thinking" and block.get("thinking"):
        return StreamEvent(reasoning=block["thinking"])
    if kind in ("tool_use", "server_tool_use") and block.get("name"):
        return StreamEvent(tool_call=block["name"])
    return None  # an empty opening, redacted thinking, tool results


# -- request translation helpers ---------------------------------------------------------------
def _joined_system(given, from_messages):
    """A system field given directly (extra_body) followed by the system messages' text."""

    def blocks(value):
        return [{"type": "text", "text": value}] if isinstance(value, str) else list(value)

    return blocks(given) + blocks(from_messages)


def _text_parts(content, where: str) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RequestNotTranslatable(f"{where}.content[{j}].type={kind}: system text must be text")
            texts.append(part.get("text", ""))
        return texts
    raise RequestNotTranslatable(f"{where}.content: text or a list of text parts is required")


def _image(part: dict, where: str) -> dict:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise RequestNotTranslatable(f"{where}.image_url: no url")
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type, _, encoding = header[len("data:") :].partition(";")
        if encoding != "base64" or not data:
            raise RequestNotTranslatable(f"{where}.image_url: only base64 data URLs translate")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise RequestNotTranslatable(f"{where}.image_url: a data: or http(s) URL is required")


def _user_content(content, where: str):
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestNotTranslatable(f"{where}.content: text or a list of parts is required")
    blocks = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            blocks.append(_image(part, at))
        else:
            raise RequestNotTranslatable(f"{at}.type={kind}: Anthropic takes text and image parts here")
    return blocks


def _assistant_content(message: dict, where: str):
    content = message.get("content")
    calls = message.get("tool_calls") or []
    if isinstance(content, str) and not calls:
        return content
    blocks: list[dict] = []
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif isinstance(content, list):
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                blocks.append({"type": "text", "text": part.get("text", "")})
            elif kind == "refusal":
                blocks.append({"type": "text", "text": part.get("refusal", "")})
            else:
                raise RequestNotTranslatable(f"{where}.content[{j}].type={kind}: assistant turns take text")
    elif content is not None:
        raise RequestNotTranslatable(f"{where}.content: text, a list of parts or null is required")
    if message.get("refusal"):
        blocks.append({"type": "text", "text": message["refusal"]})
    for k, call in enumerate(calls):
        at = f"{where}.tool_calls[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            raise RequestNotTranslatable(f"{at}: only function calls translate")
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            raise RequestNotTranslatable(f"{at}.function.arguments: not valid JSON") from None
        if not isinstance(arguments, dict):
            raise RequestNotTranslatable(f"{at}.function.arguments: must be a JSON object")
        blocks.append(
            {"type": "tool_use", "id": call.get("id") or f"call_{k}", "name": function.get("name"), "input": arguments}
        )
    return blocks


def _tool_result(message: dict, where: str) -> dict:
    call_id = message.get("tool_call_id")
    if not call_id:
        raise RequestNotTranslatable(f"{where}.tool_call_id: missing")
    content = message.get("content")
    if isinstance(content, list):
        content = [{"type": "text", "text": t} for t in _text_parts(content, where)]
    elif content is None:
        content = ""
    elif not isinstance(content, str):
        raise RequestNotTranslatable(f"{where}.content: text or a list of text parts is required")
    return {"type": "tool_result", "tool_use_id": call_id, "content": content}


def _is_tool_results(content) -> bool:
    return isinstance(content, list) and bool(content) and all(b.get("type") == "tool_result" for b in content)


def _stop_sequences(body: dict) -> list[str]:
    stops: list[str] = list(body.get("stop_sequences") or [])
    stop = body.get("stop")
    if isinstance(stop, str):
        stops.append(stop)
    elif isinstance(stop, list):
        stops.extend(stop)
    elif stop is not None:
        raise RequestNotTranslatable("stop: a string or a list of strings is required")
    if not all(isinstance(s, str) for s in stops):
        raise RequestNotTranslatable("stop: a string or a list of strings is required")
    return stops


def _metadata(body: dict) -> dict:
    metadata = body.get("metadata")
    out = dict(metadata) if isinstance(metadata, dict) and set(metadata) <= {"user_id"} else {}
    if body.get("user") is not None:
        out["user_id"] = body["user"]
    return out


def _tool(i: int, tool) -> dict:
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
        raise RequestNotTranslatable(f"tools[{i}].type={kind}: only function tools translate")
    function = tool["function"]
    if not function.get("name"):
        raise RequestNotTranslatable(f"tools[{i}].function.name: missing")
    out = {"name": function["name"], "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(choice, parallel) -> dict | None:
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    elif isinstance(choice, dict) and choice.get("type") == "function" and (choice.get("function") or {}).get("name"):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise RequestNotTranslatable(f"tool_choice={json.dumps(choice)[:60]}: not a choice that translates")
    if parallel is False:
        out = out or {"type": "auto"}
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return out
