"""OpenAI wire protocols: requests built, and stream events read as the servers send them."""

from __future__ import annotations

import json

import pytest

from shadowreplay.replay.clients.protocols import (
    OpenAIChat,
    OpenAICompletions,
    StreamEvent,
    Usage,
    WireProtocolError,
    protocol_for,
)
from shadowreplay.replay.clients.sse import SSEEvent


def chat_event(delta: dict, finish_reason=None, **extra) -> SSEEvent:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        **extra,
    }
    return SSEEvent(json.dumps(chunk))


def test_chat_request_switches_streaming_and_usage_on_and_carries_the_key():
    request = OpenAIChat().build_request(
        {"model": "m", "messages": [], "stream_options": {"continuous_usage_stats": True}}, "sk-x"
    )
    assert request.path == "/chat/completions"
    assert request.body["stream"] is True
    assert request.body["stream_options"] == {"continuous_usage_stats": True, "include_usage": True}
    assert request.headers["Authorization"] == "Bearer sk-x"
    assert request.headers["Accept"] == "text/event-stream"


def test_completions_request_without_key_or_usage():
    request = OpenAICompletions(include_usage=False).build_request({"model": "m", "prompt": "p"}, None)
    assert request.path == "/completions"
    assert "stream_options" not in request.body and "Authorization" not in request.headers


def test_role_only_opening_chunk_carries_no_output():
    event = OpenAIChat().interpret(chat_event({"role": "assistant", "content": "", "refusal": None}))
    assert not event.carries_output


def test_empty_content_chunk_carries_an_empty_output_field():
    event = OpenAIChat().interpret(chat_event({"content": ""}))
    assert event.carries_output and event.content == "" and event.output_text == ""


def test_role_in_every_chunk_with_text_is_output():
    event = OpenAIChat().interpret(chat_event({"role": "assistant", "content": "Hi"}))
    assert event.content == "Hi"


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_fields(field):
    event = OpenAIChat().interpret(chat_event({field: "think", "content": None}))
    assert event.reasoning == "think" and event.content is None and event.carries_output


def test_tool_call_deltas_are_output():
    delta = {"tool_calls": [{"index": 0, "function": {"name": "get", "arguments": '{"a":'}}]}
    event = OpenAIChat().interpret(chat_event(delta))
    assert event.tool_call == 'get{"a":' and event.content is None


def test_finish_chunk_with_empty_delta_carries_no_output():
    event = OpenAIChat().interpret(chat_event({}, finish_reason="stop"))
    assert event.finish_reason == "stop" and not event.carries_output


def test_usage_only_final_chunk_and_logprob_token_counts():
    chat = OpenAIChat()
    final = chat.interpret(
        SSEEvent(
            json.dumps(
                {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
            )
        )
    )
    assert final.usage == Usage(3, 4) and not final.carries_output
    logprobs = {"content": [{"token": "a", "logprob": -1.0}, {"token": "b", "logprob": -2.0}]}
    chunk = {
        "id": "c",
        "choices": [{"index": 0, "delta": {"content": "ab"}, "logprobs": logprobs, "finish_reason": None}],
    }
    assert chat.interpret(SSEEvent(json.dumps(chunk))).tokens == 2
    completion = {
        "id": "c",
        "choices": [{"index": 0, "text": "ab", "logprobs": {"tokens": ["a", "b"]}, "finish_reason": None}],
    }
    assert OpenAICompletions().interpret(SSEEvent(json.dumps(completion))).tokens == 2


def test_done_marker():
    assert OpenAIChat().interpret(SSEEvent("[DONE]")) == StreamEvent(done=True)


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"error": {"message": "boom", "type": "server_error"}}, "server_error: boom"),
        ({"object": "error", "message": "too long", "type": "BadRequestError", "code": 400}, "too long"),
        ({"error": "plain"}, "plain"),
    ],
)
def test_error_objects_in_the_stream(payload, message):
    assert OpenAIChat().interpret(SSEEvent(json.dumps(payload))).error == message


def test_invalid_events_raise():
    with pytest.raises(WireProtocolError, match="invalid JSON"):
        OpenAIChat().interpret(SSEEvent("{nope"))
    with pytest.raises(WireProtocolError, match="not a JSON object"):
        OpenAIChat().interpret(SSEEvent("[1, 2]"))


def test_error_message_of_bodies():
    chat = OpenAIChat()
    assert (
        chat.error_message(b'{"error": {"message": "rate", "type": "rate_limit_exceeded"}}')
        == "rate_limit_exceeded: rate"
    )
    assert chat.error_message(b'{"detail": "Not Found"}') == "Not Found"
    assert chat.error_message(b"<html>\n bad gateway </html>") == "<html> bad gateway </html>"


def test_protocol_for():
    assert isinstance(protocol_for("vllm", "chat"), OpenAIChat)
    assert isinstance(protocol_for("openai", "completions"), OpenAICompletions)
    with pytest.raises(ValueError, match="no wire protocol"):
        protocol_for("anthropic", "completions")  # the Messages API is chat only
