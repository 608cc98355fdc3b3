"""The Locust user's streaming client (loadgen/locust/gevent_stream_client.py) against tests/support/faulty_server.py.

Its contract is replay/clients/stream_client.py's: for each scripted behaviour the same status, HTTP status,
error text, usage, finish reason and token count as the aiohttp StreamingClient, so a Locust run's
result rows mean what a replay's do. gevent is imported here without monkey-patching.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Literal

import aiohttp
import gevent
import pytest

from shadowreplay.loadgen.locust.gevent_stream_client import GeventStreamingClient, StreamCancelled, client_pool
from shadowreplay.replay.clients.stream_client import StreamingClient
from shadowreplay.replay.targets.config import TargetConfig, Timeouts
from tests.support.faulty_server import FaultyServerThread

pytestmark = pytest.mark.timeout(60)

CANARY_KEY = "sk-canary-locust-5d1e9b"
SCRIPTS = {
    "normal": {"ttft_ms": 20, "itl_ms": 2, "tokens": 6},
    "completions": {"tokens": 4},
    "reasoning": {"reasoning_tokens": 2, "tokens": 5},
    "multi_token_chunks": {"tokens": 7, "tokens_per_chunk": 3},
    "empty_text_chunks": {"tokens": 6, "empty_text_every": 2},
    "vllm_finish_on_last_chunk": {"tokens": 4, "finish_in_last_chunk": True},
    "no_usage": {"tokens": 4, "send_usage": False},
    "split_characters": {"tokens": 9, "token_texts": [" a", "", "", "\u4f60", " b", "", "\ufffd c"]},
    "usage_miscounts": {"tokens": 10, "usage_error": 0.2, "tokens_per_chunk": 2},
    "empty_finish_chunk_counted": {"tokens": 5, "token_texts": [" a", ""], "finish_in_last_chunk": True},
    "crlf_with_comments": {"tokens": 3, "line_ending": "crlf", "comments": True},
    "cr_line_endings": {"tokens": 3, "line_ending": "cr"},
    "finish_without_done": {"tokens": 3, "send_done": False},
    "http_500": {"status": 500},
    "http_429_retry_after": {"status": 429, "retry_after": "7"},
    "key_echoed_in_error": {"status": 401, "echo_headers_in_error": True},
    "json_answer": {"answer_json": True},
    "reset_mid_stream": {"tokens": 5, "fault": "reset", "fault_after_tokens": 2},
    "invalid_json": {"fault": "invalid_json", "fault_after_tokens": 1},
    "malformed_sse": {"fault": "malformed_sse", "fault_after_tokens": 1},
    "error_in_stream": {"fault": "stream_error", "fault_after_tokens": 1},
    "eof_without_finish": {"fault": "eof", "fault_after_tokens": 2},
    "first_token_stall": {"fault": "stall", "stall_ms": 1500, "fault_after_tokens": 0},
    "stall_mid_stream": {"fault": "stall", "stall_ms": 2500, "fault_after_tokens": 1},
}
SAME_ERROR_TEXT = set(SCRIPTS) - {"reset_mid_stream"}  # transport-level wording differs there


@pytest.fixture(scope="module")
def server():
    with FaultyServerThread() as running:
        yield running


def target(
    base_url: str, api: Literal["chat", "completions"] = "chat", connect_s: float = 2.0, **fields
) -> TargetConfig:
    return TargetConfig(
        name="faulty",
        kind="openai",
        base_url=base_url,
        model="faulty-model",
        api=api,
        timeouts=Timeouts(connect_s=connect_s, first_token_s=1.0, total_s=2.0),
        **fields,
    )


def body(api: str, script: dict) -> dict:
    request: dict = {"model": "faulty-model", "faulty": script}
    if api == "chat":
        request["messages"] = [{"role": "user", "content": "hi"}]
    else:
        request["prompt"] = "hi"
    return request


def send_aiohttp(config: TargetConfig, request: dict):
    async def go():
        async with aiohttp.ClientSession() as session:
            return await StreamingClient(session, config, token_counter=lambda text: len(text.split())).send(request)

    return asyncio.run(go())


def send_gevent(config: TargetConfig, request: dict):
    client = GeventStreamingClient(client_pool(config), config, token_counter=lambda text: len(text.split()))
    return client.send(request)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_same_outcome_as_the_replay_client(server, name, monkeypatch):
    monkeypatch.setenv("LOCUST_CANARY_KEY", CANARY_KEY)
    api = "completions" if name == "completions" else "chat"
    config = target(server.base_url, api=api, api_key_env="LOCUST_CANARY_KEY")
    request = body(api, SCRIPTS[name])
    ours, reference = send_gevent(config, request), send_aiohttp(config, request)
    fields = (
        "status",
        "http_status",
        "prompt_tokens",
        "completion_tokens",
        "client_tokens",
        "finish_reason",
        "retry_after_s",
    )
    assert {f: getattr(ours, f) for f in fields} == {f: getattr(reference, f) for f in fields}
    assert len(ours.token_times) == len(reference.token_times)
    if name in SAME_ERROR_TEXT:
        assert ours.error == reference.error
    assert CANARY_KEY not in (ours.error or "")
    assert ours.sent <= (ours.first_token or ours.done) <= ours.done
    assert all(a <= b for a, b in zip(ours.token_times, ours.token_times[1:]))


def test_token_times_follow_the_scripted_schedule(server):
    outcome = send_gevent(target(server.base_url), body("chat", {"ttft_ms": 80, "itl_ms": 20, "tokens": 4}))
    assert outcome.status == "ok" and len(outcome.token_times) == 4
    assert outcome.first_token - outcome.sent >= 0.080
    assert outcome.last_token - outcome.sent >= 0.080 + 3 * 0.020  # token i no earlier than ttft + i * itl


def test_connection_goes_back_to_the_pool(server):
    config = target(server.base_url)
    client = GeventStreamingClient(client_pool(config), config)
    seen_before = len(server.server.client_ports)
    outcomes = [client.send(body("chat", {"tokens": 2})) for _ in range(3)]
    assert [o.status for o in outcomes] == ["ok"] * 3
    ports = server.server.client_ports[seen_before:]
    assert len(set(ports)) == 1, "one keep-alive connection per user"


def test_connection_refused():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcome = send_gevent(target(f"http://127.0.0.1:{port}/v1"), body("chat", {}))
    assert outcome.status == "connection_error" and outcome.http_status is None
    assert outcome.error.startswith("cannot connect:")


def test_connect_timeout():
    # A listener whose accept queue is full: the kernel drops further SYNs, so connecting hangs.
    listener = socket.socket()
    fillers = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.05)
        outcome = send_gevent(target(f"http://127.0.0.1:{port}/v1", connect_s=0.3), body("chat", {}))
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    assert outcome.status == "timeout"
    assert outcome.error.startswith("connect timeout: no connection within 0.3 s")


def test_killed_greenlet_raises_stream_cancelled_with_partial_timings(server):
    config = target(server.base_url)
    client = GeventStreamingClient(client_pool(config), config)
    request = body("chat", {"ttft_ms": 20, "itl_ms": 100, "tokens": 20})
    greenlet = gevent.spawn(client.send, request)
    gevent.sleep(0.2)  # the first tokens have arrived, the stream goes on
    greenlet.kill(block=True, timeout=5)
    assert greenlet.dead
    cancelled = greenlet.value
    assert isinstance(cancelled, StreamCancelled)  # a GreenletExit: the greenlet ended normally
    outcome = cancelled.outcome
    assert outcome.status == "cancelled" and outcome.error.startswith("cancelled")
    assert 1 <= len(outcome.token_times) < 20 and outcome.first_token is not None
