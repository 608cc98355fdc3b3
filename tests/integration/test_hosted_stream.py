"""The streaming client against local servers speaking Anthropic's Messages stream
(tests/support/anthropic_server.py) and Azure OpenAI's deployment paths (tests/support/azure_openai_server.py),
over 127.0.0.1. Timing checks are lower bounds and orderings only."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import aiohttp
import pytest

from shadowreplay.replay.clients.stream_client import StreamingClient
from shadowreplay.replay.targets.config import AzureOptions, TargetConfig, Timeouts
from tests.support.anthropic_server import AnthropicServer
from tests.support.azure_openai_server import AzureOpenAIServer
from tests.support.server_thread import ServerThread

pytestmark = pytest.mark.timeout(60)

KEY = "sk-ant-test-5c1e0a9d"
KEY_ENV = "SR_HOSTED_STREAM_KEY"
RUN_BOUND_S = 15.0


def word_count(text: str) -> int:
    return len(text.split())


@pytest.fixture(scope="module")
def anthropic():
    with ServerThread(AnthropicServer(api_key=KEY)) as running:
        yield running


@pytest.fixture(scope="module")
def azure():
    with ServerThread(AzureOpenAIServer({"gpt-4o-prod"}, api_key=KEY)) as running:
        yield running


@pytest.fixture(autouse=True)
def key_variable(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def claude(base_url: str, **fields) -> TargetConfig:
    return TargetConfig(
        name="claude",
        kind="anthropic",
        base_url=base_url,
        model="claude-test",
        api_key_env=KEY_ENV,
        timeouts=Timeouts(connect_s=2, first_token_s=5, total_s=10),
        **fields,
    )


def request(text: str = "Hello there", script: dict | None = None, **fields) -> dict:
    if script:
        text += f" [[script {json.dumps(script)}]]"
    return {"model": "claude-test", "messages": [{"role": "user", "content": text}], **fields}


def send(target: TargetConfig, body: dict, **options):
    async def go():
        async with aiohttp.ClientSession() as session:
            client = StreamingClient(session, target, **options)
            async with asyncio.timeout(RUN_BOUND_S):
                return await client.send(body)

    return asyncio.run(go())


# -- Anthropic: streams ---------------------------------------------------------------------------
def test_text_stream_timings_usage_and_finish(anthropic):
    body = request(script={"ttft_ms": 60, "itl_ms": 15, "tokens_per_delta": 2, "cached_tokens": 2}, max_tokens=6)
    outcome = send(claude(anthropic.base_url), body, token_counter=word_count, keep_output_text=True)
    assert outcome.status == "ok" and outcome.http_status == 200 and outcome.error is None
    assert outcome.completion_tokens == 6 and outcome.client_tokens == 6 and len(outcome.token_times) == 6
    assert outcome.prompt_tokens == len(body["messages"][0]["content"].split())  # uncached + cache reads
    assert outcome.finish_reason == "length"  # stop_reason max_tokens
    assert outcome.output_text == " t0 t1 t2 t3 t4 t5"
    times = outcome.token_times
    assert times[0] == times[1] and times[2] == times[3] and times[4] == times[5]  # two tokens per delta
    assert all(a <= b for a, b in zip(times, times[1:]))
    assert outcome.first_token - outcome.sent >= 0.060  # TTFT to the first text delta, not message_start
    assert outcome.last_token - outcome.sent >= 0.060 + 2 * 0.015
    assert outcome.last_token <= outcome.done


def test_shorter_answer_ends_the_turn(anthropic):
    outcome = send(claude(anthropic.base_url), request(script={"tokens": 3}, max_tokens=50))
    assert outcome.status == "ok" and outcome.completion_tokens == 3 and outcome.finish_reason == "stop"


def test_thinking_tokens_count_for_ttft_and_usage_but_not_the_answer(anthropic):
    body = request(script={"ttft_ms": 40, "itl_ms": 5, "thinking_tokens": 3, "tokens": 7}, max_tokens=20)
    outcome = send(claude(anthropic.base_url), body, token_counter=word_count, keep_output_text=True)
    assert outcome.status == "ok" and outcome.completion_tokens == 7 and len(outcome.token_times) == 7
    assert outcome.output_text == " t3 t4 t5 t6"
    assert outcome.first_token - outcome.sent >= 0.040


def test_the_translated_body_passes_the_strict_server(anthropic):
    server = anthropic.server
    body = {
        "model": "claude-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ],
        "max_tokens": 4,
        "temperature": 0.2,
        "stop": ["END"],
        "stream_options": {"include_usage": True},
        "n": 1,
    }
    outcome = send(claude(anthropic.base_url), body)
    assert outcome.status == "ok", outcome.error
    received = server.requests[-1]
    assert received["system"] == "Be brief." and received["stop_sequences"] == ["END"] and received["stream"] is True
    assert "stop" not in received and "n" not in received and "stream_options" not in received
    headers = server.headers[-1]
    assert headers["x-api-key"] == KEY and headers["anthropic-version"] == "2023-06-01"


def test_an_untranslatable_request_is_reported_and_never_sent(anthropic):
    seen = len(anthropic.server.requests)
    outcome = send(claude(anthropic.base_url), request(n=3, max_tokens=5))
    assert outcome.status == "http_error" and outcome.http_status is None and outcome.sent is None
    assert "n=3" in outcome.error
    assert len(anthropic.server.requests) == seen


# -- Anthropic: errors ----------------------------------------------------------------------------
def test_wrong_key_is_401_and_the_key_is_not_in_the_error(anthropic, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-ant-wrong-key-000")
    outcome = send(claude(anthropic.base_url), request(max_tokens=3))
    assert (outcome.status, outcome.http_status) == ("http_error", 401)
    assert "authentication_error" in outcome.error and "sk-ant-wrong-key-000" not in outcome.error


@pytest.mark.parametrize(("status", "kind"), [(403, "permission_error"), (500, "api_error"), (529, "overloaded_error")])
def test_error_statuses_and_types(anthropic, status, kind):
    outcome = send(
        claude(anthropic.base_url), request(script={"status": status, "echo_headers_in_error": True}, max_tokens=3)
    )
    assert (outcome.status, outcome.http_status) == ("http_error", status)
    assert kind in outcome.error and KEY not in outcome.error and "[redacted]" in outcome.error


def test_429_retry_after_header(anthropic):
    outcome = send(claude(anthropic.base_url), request(script={"status": 429, "retry_after": "7"}, max_tokens=3))
    assert (outcome.http_status, outcome.retry_after_s) == (429, 7.0)
    assert "rate_limit_error" in outcome.error


def test_429_without_retry_after_waits_for_the_ratelimit_reset(anthropic):
    outcome = send(
        claude(anthropic.base_url), request(script={"status": 429, "ratelimit_reset_in_s": 20}, max_tokens=3)
    )
    assert outcome.http_status == 429
    assert 15 < outcome.retry_after_s <= 20  # the requests limit (remaining 0), not the tokens limit (50 s)


def test_overloaded_error_mid_stream_keeps_partial_timings(anthropic):
    outcome = send(
        claude(anthropic.base_url),
        request(script={"error_after_tokens": 2, "itl_ms": 5}, max_tokens=6),
        token_counter=word_count,
    )
    assert outcome.status == "stream_error" and outcome.http_status == 200
    assert "overloaded_error" in outcome.error
    assert len(outcome.token_times) == 2 and outcome.completion_tokens is None


# -- Azure OpenAI ---------------------------------------------------------------------------------
def azure_target(
    base_url: str, deployment: str | None = "gpt-4o-prod", api: Literal["chat", "completions"] = "chat"
) -> TargetConfig:
    return TargetConfig(
        name="azure",
        kind="azure_openai",
        base_url=base_url,
        model="gpt-4o",
        api=api,
        api_key_env=KEY_ENV,
        azure=AzureOptions(deployment=deployment, api_version="2024-10-21"),
        timeouts=Timeouts(connect_s=2, first_token_s=5, total_s=10),
    )


def test_azure_stream_through_the_deployment_path(azure):
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "faulty": {"ttft_ms": 30},
    }
    outcome = send(azure_target(azure.base_url), body, keep_output_text=True)
    assert outcome.status == "ok", outcome.error
    assert outcome.completion_tokens == 5 and len(outcome.token_times) == 5 and outcome.output_text == " t0 t1 t2 t3 t4"
    assert outcome.first_token - outcome.sent >= 0.030  # not the prompt_filter_results chunk
    assert azure.server.seen[-1] == ("gpt-4o-prod", "2024-10-21", "chat")
    completions = send(
        azure_target(azure.base_url, api="completions"), {"model": "gpt-4o", "prompt": "p", "max_tokens": 3}
    )
    assert completions.status == "ok" and azure.server.seen[-1][2] == "completions"


def test_azure_errors_unknown_deployment_and_wrong_key(azure, monkeypatch):
    missing = send(
        azure_target(azure.base_url, deployment="nope"),
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
    )
    assert (missing.http_status, missing.status) == (404, "http_error") and "DeploymentNotFound" in missing.error
    monkeypatch.setenv(KEY_ENV, "wrong-azure-key")
    denied = send(azure_target(azure.base_url), {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
    assert denied.http_status == 401 and "Access denied" in denied.error
