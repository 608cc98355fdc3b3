"""Anthropic Messages and Azure OpenAI wire protocols: canonical bodies translated, untranslatable
fields named, stream events read as Anthropic sends them (shapes from its streaming reference)."""

from __future__ import annotations

import json

import pytest

from shadowreplay.replay.clients.protocols import (
    AnthropicMessages,
    AzureOpenAIChat,
    AzureOpenAICompletions,
    RequestNotTranslatable,
    Usage,
    WireProtocolError,
    protocol_for_target,
)
from shadowreplay.replay.clients.sse import SSEEvent
from shadowreplay.replay.targets.config import TargetConfig

ANTHROPIC = AnthropicMessages()


def translate(**body) -> dict:
    return ANTHROPIC.translate_body({"model": "claude-x", **body})


def event(kind: str, **data) -> SSEEvent:
    return SSEEvent(json.dumps({"type": kind, **data}), event=kind)


# -- requests -------------------------------------------------------------------------------------
def test_request_headers_path_and_stream_flag():
    protocol = AnthropicMessages(version="2023-06-01", beta=["a-2025", "b-2025"])
    request = protocol.build_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "sk-ant-1")
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == "sk-ant-1" and "Authorization" not in request.headers
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["anthropic-beta"] == "a-2025,b-2025"
    assert request.body["stream"] is True and "stream_options" not in request.body
    assert (
        "x-api-key"
        not in AnthropicMessages()
        .build_request({"model": "m", "messages": [{"role": "user", "content": "x"}]}, None)
        .headers
    )


def test_system_messages_go_to_the_top_level_and_max_tokens_is_filled_in():
    body = translate(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hello", "name": "ann"},
        ]
    )
    assert body["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Answer in French."}]
    assert body["messages"] == [{"role": "user", "content": "Hello"}]
    assert body["max_tokens"] == 4096  # Anthropic requires it; the target's default_max_tokens
    assert translate(messages=[{"role": "system", "content": "S"}, {"role": "user", "content": "u"}])["system"] == "S"
    assert (
        AnthropicMessages(default_max_tokens=77).translate_body(
            {"model": "m", "messages": [{"role": "user", "content": "u"}]}
        )["max_tokens"]
        == 77
    )


def test_sampling_fields_stop_and_user():
    body = translate(
        messages=[{"role": "user", "content": "u"}],
        max_completion_tokens=30,
        max_tokens=99,
        temperature=0.4,
        top_p=0.9,
        top_k=20,
        stop="END",
        user="u-1",
        n=1,
        stream=True,
        stream_options={"include_usage": True},
        presence_penalty=0,
        response_format={"type": "text"},
    )
    assert body == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": "u"}],
        "max_tokens": 30,
        "temperature": 0.4,
        "top_p": 0.9,
        "top_k": 20,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
    }
    assert translate(messages=[{"role": "user", "content": "u"}], stop=["a", "b"])["stop_sequences"] == ["a", "b"]


def test_multi_part_content_with_images():
    body = translate(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            }
        ]
    )
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_tools_tool_calls_and_tool_results():
    body = translate(
        messages=[
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "24C"}]},
            {"role": "assistant", "content": "Paris 18C, Rome 24C."},
        ],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "Weather now",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
        tool_choice={"type": "function", "function": {"name": "weather"}},
        parallel_tool_calls=False,
    )
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Rome"}},
        ],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [  # consecutive tool results: one user turn
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "24C"}]},
        ],
    }
    assert body["messages"][3] == {"role": "assistant", "content": "Paris 18C, Rome 24C."}
    assert body["tools"] == [
        {
            "name": "weather",
            "description": "Weather now",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "weather", "disable_parallel_tool_use": True}
    assert translate(messages=[{"role": "user", "content": "u"}], tools=body_tools(), tool_choice="required")[
        "tool_choice"
    ] == {"type": "any"}


def body_tools() -> list[dict]:
    return [{"type": "function", "function": {"name": "f"}}]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"n": 2}, "n=2"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"logprobs": True}, "logprobs"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"seed": 7}, "seed"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"ignore_eos": True}, "ignore_eos"),
        ({"temperature": 1.5}, "temperature=1.5"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type=web_search"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"flavour": "x"}, "flavour"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}]},
            "messages[1].role=system",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages[0].content[0].type=input_audio",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
                        ],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role='function'"),
        ({"messages": []}, "messages"),
    ],
)
def test_untranslatable_fields_are_named(fields, named):
    body = {"messages": [{"role": "user", "content": "u"}], **fields}
    with pytest.raises(RequestNotTranslatable) as err:
        translate(**body)
    assert named in str(err.value)


def test_ignore_fields_drop_instead_of_refusing():
    protocol = AnthropicMessages(ignore_fields=["seed", "reasoning_effort"])
    body = protocol.translate_body(
        {"model": "m", "messages": [{"role": "user", "content": "u"}], "seed": 3, "reasoning_effort": "low"}
    )
    assert "seed" not in body and "reasoning_effort" not in body


def test_anthropic_fields_from_extra_body_pass_through():
    body = translate(
        messages=[{"role": "system", "content": "S"}, {"role": "user", "content": "u"}],
        thinking={"type": "enabled", "budget_tokens": 1024},
        system="Policy.",
    )
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["system"] == [{"type": "text", "text": "Policy."}, {"type": "text", "text": "S"}]


# -- stream events --------------------------------------------------------------------------------
def test_message_start_gives_all_input_tokens_and_no_output_count():
    start = ANTHROPIC.interpret(
        event(
            "message_start",
            message={
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "m",
                "stop_reason": None,
                "usage": {
                    "input_tokens": 10,
                    "cache_creation_input_tokens": 5,
                    "cache_read_input_tokens": 100,
                    "output_tokens": 1,
                },
            },
        )
    )
    assert start.usage == Usage(115, None) and not start.carries_output


def test_block_starts_deltas_and_their_kinds():
    assert (
        ANTHROPIC.interpret(event("content_block_start", index=0, content_block={"type": "text", "text": ""})) is None
    )
    assert (
        ANTHROPIC.interpret(event("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""}))
        is None
    )
    tool = ANTHROPIC.interpret(
        event(
            "content_block_start",
            index=1,
            content_block={"type": "tool_use", "id": "t", "name": "weather", "input": {}},
        )
    )
    assert tool.tool_call == "weather"
    text = ANTHROPIC.interpret(event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hello"}))
    assert text.content == "Hello" and text.carries_output
    thinking = ANTHROPIC.interpret(
        event("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "Let me"})
    )
    assert thinking.reasoning == "Let me" and thinking.content is None
    json_part = ANTHROPIC.interpret(
        event("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": '{"city": '})
    )
    assert json_part.tool_call == '{"city": '
    assert (
        ANTHROPIC.interpret(event("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "Eq"}))
        is None
    )
    assert ANTHROPIC.interpret(event("content_block_stop", index=0)) is None
    assert ANTHROPIC.interpret(event("ping")) is None
    assert ANTHROPIC.interpret(event("some_future_event", x=1)) is None


def test_message_delta_usage_stop_reason_and_the_end():
    delta = ANTHROPIC.interpret(
        event("message_delta", delta={"stop_reason": "max_tokens", "stop_sequence": None}, usage={"output_tokens": 42})
    )
    assert delta.finish_reason == "length" and delta.usage == Usage(None, 42)
    assert (
        ANTHROPIC.interpret(
            event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 1})
        ).finish_reason
        == "stop"
    )
    assert (
        ANTHROPIC.interpret(
            event("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 1})
        ).finish_reason
        == "tool_calls"
    )
    assert ANTHROPIC.interpret(event("message_stop")).done


def test_error_event_and_error_bodies():
    error = ANTHROPIC.interpret(event("error", error={"type": "overloaded_error", "message": "Overloaded"}))
    assert error.error == "overloaded_error: Overloaded"
    body = b'{"type":"error","error":{"type":"rate_limit_error","message":"Too many"},"request_id":"req_1"}'
    assert ANTHROPIC.error_message(body) == "rate_limit_error: Too many"


def test_invalid_events_raise():
    with pytest.raises(WireProtocolError):
        ANTHROPIC.interpret(SSEEvent("{not json", event="content_block_delta"))
    with pytest.raises(WireProtocolError):
        ANTHROPIC.interpret(event("content_block_delta", index=0))


# -- Azure OpenAI ---------------------------------------------------------------------------------
def test_azure_path_query_and_key_header():
    request = AzureOpenAIChat("gpt-4o prod", "2024-10-21").build_request({"model": "x", "messages": []}, "azure-key")
    assert request.path == "/openai/deployments/gpt-4o%20prod/chat/completions?api-version=2024-10-21"
    assert request.headers["api-key"] == "azure-key" and "Authorization" not in request.headers
    assert request.body["stream"] is True and request.body["stream_options"] == {"include_usage": True}
    completions = AzureOpenAICompletions("d", "2024-10-21").build_request({"model": "x", "prompt": "p"}, None)
    assert completions.path == "/openai/deployments/d/completions?api-version=2024-10-21"
    assert "api-key" not in completions.headers


def test_protocol_for_target_uses_the_config_sections():
    azure = TargetConfig(
        name="az",
        kind="azure_openai",
        base_url="https://r.openai.azure.com",
        model="gpt-4o",
        azure={"api_version": "2024-10-21"},
    )
    protocol = protocol_for_target(azure)
    assert isinstance(protocol, AzureOpenAIChat) and protocol.deployment == "gpt-4o"  # deployment defaults to model
    claude = TargetConfig(
        name="c",
        kind="anthropic",
        base_url="https://api.anthropic.com",
        model="claude",
        anthropic={"default_max_tokens": 512, "ignore_fields": ["seed"], "beta": ["x"]},
    )
    protocol = protocol_for_target(claude)
    assert isinstance(protocol, AnthropicMessages)
    assert (protocol.default_max_tokens, protocol.ignore_fields, protocol.beta) == (512, frozenset({"seed"}), ("x",))
