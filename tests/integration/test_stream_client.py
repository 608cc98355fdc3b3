"""The streaming client against a real local server (tests/support/faulty_server.py) over 127.0.0.1.

Timing checks are lower bounds and orderings only: the server sends token i no earlier than
`ttft_ms + i * itl_ms` after the request reached it, which is after the client's `sent`.
"""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime
from typing import Literal

import aiohttp
import pytest

from shadowreplay.replay.clients.protocols import StreamEvent, Usage
from shadowreplay.replay.clients.stream_client import StreamingClient, TokenTimeline, parse_retry_after
from shadowreplay.replay.targets.config import TargetConfig, Timeouts
from tests.support.faulty_server import FaultyServerThread

pytestmark = pytest.mark.timeout(60)

CANARY_KEY = "sk-canary-3f9a1c7e5b2d4f60"
RUN_BOUND_S = 15.0  # no single test's client work may take longer


def word_count(text: str) -> int:
    """The faulty server's tokens are " t<i>": one whitespace-separated word each."""
    return len(text.split())


@pytest.fixture(scope="module")
def server():
    with FaultyServerThread() as running:
        yield running


def target(
    base_url: str,
    api: Literal["chat", "completions"] = "chat",
    connect_s: float = 2.0,
    first_token_s: float = 5.0,
    total_s: float = 10.0,
    **fields,
) -> TargetConfig:
    return TargetConfig(
        name="faulty",
        kind="openai",
        base_url=base_url,
        model="faulty-model",
        api=api,
        timeouts=Timeouts(connect_s=connect_s, first_token_s=first_token_s, total_s=total_s),
        **fields,
    )


def body(api: str = "chat", **script) -> dict:
    request: dict = {"model": "faulty-model", "faulty": script}
    if api == "chat":
        request["messages"] = [{"role": "user", "content": "hi"}]
    else:
        request["prompt"] = "hi"
    return request


def send(config: TargetConfig, request: dict, **client_options):
    """One request through a fresh session, bounded in time."""

    async def go():
        async with aiohttp.ClientSession() as session:
            client = StreamingClient(session, config, **client_options)
            async with asyncio.timeout(RUN_BOUND_S):
                return await client.send(request)

    return asyncio.run(go())


def assert_timings_consistent(outcome) -> None:
    times = outcome.token_times
    assert all(a <= b for a, b in zip(times, times[1:])), "token_times must not decrease"
    assert outcome.sent < times[0] == outcome.first_token
    assert times[-1] == outcome.last_token <= outcome.done


# -- normal streams -------------------------------------------------------------------------------
def test_chat_stream_timings_usage_and_text(server):
    outcome = send(
        target(server.base_url), body(ttft_ms=60, itl_ms=10, tokens=6), token_counter=word_count, keep_output_text=True
    )
    assert outcome.status == "ok" and outcome.error is None and outcome.http_status == 200
    assert (outcome.prompt_tokens, outcome.completion_tokens, outcome.client_tokens) == (7, 6, 6)
    assert outcome.finish_reason == "length"
    assert outcome.output_text == " t0 t1 t2 t3 t4 t5"
    assert len(outcome.token_times) == 6
    assert_timings_consistent(outcome)
    # The role-only first chunk leaves at once; TTFT is to the first content, scripted at 60 ms.
    assert outcome.first_token - outcome.sent >= 0.060
    assert outcome.last_token - outcome.sent >= 0.060 + 5 * 0.010
    assert outcome.retry_after_s is None


def test_completions_stream_with_openai_style_empty_finish_chunk(server):
    # /v1/completions ends with {"text": "", "finish_reason": "length"}: not a token.
    outcome = send(
        target(server.base_url, api="completions"), body("completions", ttft_ms=20, tokens=5), keep_output_text=True
    )
    assert outcome.status == "ok"
    assert outcome.completion_tokens == 5 and len(outcome.token_times) == 5 and outcome.client_tokens == 5
    assert outcome.output_text == " t0 t1 t2 t3 t4"
    assert outcome.first_token - outcome.sent >= 0.020
    assert_timings_consistent(outcome)


def test_max_tokens_of_the_request_sets_the_length(server):
    request = body(tokens=3)
    request["max_tokens"] = 11
    outcome = send(target(server.base_url), request)
    assert outcome.status == "ok" and outcome.completion_tokens == 11 and len(outcome.token_times) == 11


def test_reasoning_deltas_count_for_ttft_and_tokens_but_not_output_text(server):
    outcome = send(target(server.base_url), body(ttft_ms=30, tokens=5, reasoning_tokens=2), keep_output_text=True)
    assert outcome.status == "ok"
    assert len(outcome.token_times) == 5 == outcome.completion_tokens
    assert outcome.output_text == " t2 t3 t4"
    assert outcome.first_token - outcome.sent >= 0.030


def test_multi_token_chunks_count_k_tokens_each_with_a_counter(server):
    outcome = send(
        target(server.base_url), body(ttft_ms=10, itl_ms=20, tokens=9, tokens_per_chunk=3), token_counter=word_count
    )
    assert outcome.status == "ok" and outcome.completion_tokens == 9 and outcome.client_tokens == 9
    times = outcome.token_times
    assert len(times) == 9
    assert times[0] == times[1] == times[2] < times[3] == times[4] == times[5] < times[6] == times[7] == times[8]
    assert times[3] - times[0] > 0  # the next chunk is a later read
    assert_timings_consistent(outcome)


def test_multi_token_chunks_without_a_counter_share_the_usage_over_the_chunks(server):
    outcome = send(target(server.base_url), body(tokens=9, tokens_per_chunk=3, itl_ms=30))
    assert outcome.status == "ok" and outcome.completion_tokens == 9
    # One per chunk is the estimate (client_tokens 3); usage says 9, so each chunk carries 3.
    assert outcome.client_tokens == 3
    assert len(outcome.token_times) == 9 and all(outcome.token_times.count(t) == 3 for t in outcome.token_times)


def test_empty_text_chunks_are_tokens_when_usage_shows_one_token_per_chunk(server):
    outcome = send(
        target(server.base_url), body(tokens=9, empty_text_every=3), token_counter=word_count, keep_output_text=True
    )
    assert outcome.status == "ok" and outcome.completion_tokens == 9
    assert len(outcome.token_times) == 9  # the three "" chunks carried tokens too
    assert outcome.client_tokens == 9  # the client's own count: token events, "" ones included
    assert outcome.output_text == " t0 t1 t3 t4 t6 t7"
    assert_timings_consistent(outcome)


def test_empty_text_first_chunk_is_the_first_token_when_usage_proves_it(server):
    outcome = send(target(server.base_url), body(ttft_ms=40, itl_ms=30, tokens=4, empty_text_every=1))
    assert outcome.status == "ok" and len(outcome.token_times) == 4 == outcome.completion_tokens
    assert outcome.first_token - outcome.sent >= 0.040


def test_vllm_style_finish_on_the_last_token_even_when_it_is_empty(server):
    outcome = send(target(server.base_url), body(tokens=6, finish_in_last_chunk=True, empty_text_every=6))
    assert outcome.status == "ok" and outcome.finish_reason == "length"
    assert len(outcome.token_times) == 6 == outcome.completion_tokens


def test_without_usage_every_output_chunk_is_a_token_event(server):
    outcome = send(target(server.base_url), body(tokens=6, empty_text_every=3, send_usage=False))
    assert outcome.status == "ok"
    assert outcome.completion_tokens is None and outcome.prompt_tokens is None
    assert len(outcome.token_times) == 6 == outcome.client_tokens  # the "" chunks are tokens too


def test_crlf_and_cr_line_endings_with_comments(server):
    for ending in ("crlf", "cr"):
        outcome = send(target(server.base_url), body(tokens=4, line_ending=ending, comments=True))
        assert outcome.status == "ok" and len(outcome.token_times) == 4 == outcome.completion_tokens, ending


def test_finish_reason_without_done_is_ok(server):
    outcome = send(target(server.base_url), body(tokens=3, send_done=False))
    assert outcome.status == "ok" and outcome.finish_reason == "length" and len(outcome.token_times) == 3


def test_connection_is_reused_between_requests(server):
    async def go():
        async with aiohttp.ClientSession() as session:
            client = StreamingClient(session, target(server.base_url))
            return [(await client.send(body(tokens=2))).status for _ in range(3)]

    seen_before = len(server.server.client_ports)
    assert asyncio.run(go()) == ["ok", "ok", "ok"]
    ports = server.server.client_ports[seen_before:]
    assert len(ports) == 3 and len(set(ports)) == 1  # read to its end, the connection went back to the pool


# -- HTTP errors ----------------------------------------------------------------------------------
def test_500_with_openai_error_body(server):
    outcome = send(target(server.base_url), body(status=500))
    assert outcome.status == "http_error" and outcome.http_status == 500
    assert outcome.error == "HTTP 500: server_error: scripted failure with status 500"
    assert outcome.token_times == [] and outcome.first_token is None and outcome.retry_after_s is None
    assert outcome.sent <= outcome.done


def test_429_with_retry_after_seconds(server):
    outcome = send(target(server.base_url), body(status=429, retry_after="3"))
    assert outcome.status == "http_error" and outcome.http_status == 429
    assert outcome.retry_after_s == 3.0
    assert "rate_limit_exceeded" in outcome.error


def test_503_with_retry_after_http_date(server):
    outcome = send(target(server.base_url), body(status=503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT"))
    assert outcome.status == "http_error" and outcome.http_status == 503
    assert outcome.retry_after_s == 0.0  # a date in the past: retry now


def test_retry_after_parsing():
    now = datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC)
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now) == 30.0
    assert parse_retry_after({"Retry-After": " 2.5 "}) == 2.5
    assert parse_retry_after({"Retry-After": "-4"}) == 0.0
    assert parse_retry_after({"retry-after-ms": "1500", "Retry-After": "9"}) == 1.5
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None


def test_api_key_is_sent_but_scrubbed_from_errors(server, monkeypatch):
    monkeypatch.setenv("FAULTY_TEST_KEY", CANARY_KEY)
    outcome = send(target(server.base_url, api_key_env="FAULTY_TEST_KEY"), body(status=401, echo_headers_in_error=True))
    assert outcome.status == "http_error" and outcome.http_status == 401
    assert "Bearer [redacted]" in outcome.error  # the server saw the key; the outcome never holds it
    assert CANARY_KEY not in repr(outcome)


def test_json_answer_instead_of_a_stream(server):
    outcome = send(target(server.base_url), body(answer_json=True))
    assert outcome.status == "stream_error" and outcome.http_status == 200
    assert outcome.error.startswith("server answered JSON, not an event stream")


def test_request_that_cannot_be_encoded_is_not_sent(server):
    request = body()
    request["temperature"] = {0.5}  # a set: not JSON
    outcome = send(target(server.base_url), request)
    assert outcome.status == "http_error" and outcome.sent is None and outcome.http_status is None
    assert outcome.error.startswith("request not sent:")


# -- broken streams -------------------------------------------------------------------------------
def test_connection_reset_mid_stream_keeps_partial_timings(server):
    outcome = send(target(server.base_url), body(tokens=6, fault="reset", fault_after_tokens=2))
    assert outcome.status == "connection_error" and outcome.http_status == 200
    assert outcome.error.startswith("connection broken mid-stream")
    assert len(outcome.token_times) == 2 and outcome.completion_tokens is None
    assert_timings_consistent(outcome)


def test_invalid_json_event(server):
    outcome = send(target(server.base_url), body(tokens=4, fault="invalid_json", fault_after_tokens=1))
    assert outcome.status == "stream_error"
    assert outcome.error.startswith("invalid JSON in stream event:")
    assert len(outcome.token_times) == 1


def test_malformed_sse_then_end(server):
    outcome = send(target(server.base_url), body(tokens=4, fault="malformed_sse", fault_after_tokens=2))
    assert outcome.status == "stream_error"
    assert outcome.error == "stream ended without [DONE] or a finish reason"
    assert len(outcome.token_times) == 2


def test_error_object_inside_the_stream(server):
    outcome = send(target(server.base_url), body(tokens=4, fault="stream_error", fault_after_tokens=3))
    assert outcome.status == "stream_error" and outcome.http_status == 200
    assert outcome.error == "error in stream: server_error: scripted error inside the stream"
    assert len(outcome.token_times) == 3


def test_an_error_after_the_finish_reason_is_still_an_error(server):
    outcome = send(
        target(server.base_url), body(tokens=4, finish_in_last_chunk=True, fault="stream_error", fault_after_tokens=4)
    )
    assert outcome.finish_reason is not None and len(outcome.token_times) == 4
    assert outcome.status == "stream_error" and outcome.error.startswith("error in stream:")


def test_clean_end_without_done_or_finish_reason(server):
    outcome = send(target(server.base_url), body(tokens=4, fault="eof", fault_after_tokens=2))
    assert outcome.status == "stream_error"
    assert outcome.error == "stream ended without [DONE] or a finish reason"
    assert len(outcome.token_times) == 2 and outcome.finish_reason is None


# -- timeouts and connections ---------------------------------------------------------------------
def test_stall_before_first_token_is_a_first_token_timeout(server):
    started = time.perf_counter()
    outcome = send(target(server.base_url, first_token_s=0.3, total_s=5.0), body(ttft_ms=3000, tokens=2))
    assert outcome.status == "timeout"
    assert outcome.error == "first-token timeout: no output token within 0.3 s"
    assert outcome.token_times == [] and outcome.http_status == 200
    assert outcome.done - outcome.sent >= 0.3
    assert time.perf_counter() - started < 3.0  # it did not wait for the stalled token


def test_stall_mid_stream_is_a_total_timeout(server):
    outcome = send(
        target(server.base_url, first_token_s=0.5, total_s=0.8),
        body(tokens=4, fault="stall", fault_after_tokens=2, stall_ms=3000),
    )
    assert outcome.status == "timeout"
    assert outcome.error == "total timeout: stream not finished within 0.8 s"
    assert len(outcome.token_times) == 2
    assert outcome.done - outcome.sent >= 0.8


def test_first_token_limit_does_not_apply_after_the_first_token(server):
    outcome = send(
        target(server.base_url, first_token_s=0.3, total_s=5.0),
        body(tokens=3, fault="stall", fault_after_tokens=1, stall_ms=600),
    )
    assert outcome.status == "ok" and len(outcome.token_times) == 3
    assert outcome.token_times[1] - outcome.token_times[0] >= 0.5


def test_connection_refused():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcome = send(target(f"http://127.0.0.1:{port}/v1"), body())
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
        outcome = send(target(f"http://127.0.0.1:{port}/v1", connect_s=0.3), body())
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    assert outcome.status == "timeout"
    assert outcome.error.startswith("connect timeout: no connection within 0.3 s")


def test_cancellation_gives_a_cancelled_outcome(server):
    async def go():
        async with aiohttp.ClientSession() as session:
            client = StreamingClient(session, target(server.base_url))
            task = asyncio.create_task(client.send(body(tokens=4, fault="stall", fault_after_tokens=1, stall_ms=3000)))
            await asyncio.sleep(0.3)
            task.cancel()
            async with asyncio.timeout(5):
                outcome = await task
            return outcome, task.cancelling()

    outcome, cancelling = asyncio.run(go())
    assert outcome.status == "cancelled" and outcome.error == "cancelled by the caller"
    assert len(outcome.token_times) == 1
    assert cancelling == 1  # the caller can still see that the task was asked to stop


# -- token accounting on its own ----------------------------------------------------------------
def test_timeline_uses_cumulative_usage_steps_when_usage_comes_with_every_chunk():
    timeline = TokenTimeline()
    timeline.add(1.0, StreamEvent(usage=Usage(5, 0)))  # role-only opening with usage
    timeline.add(2.0, StreamEvent(content="ab", usage=Usage(5, 2)))
    timeline.add(3.0, StreamEvent(content="", usage=Usage(5, 3)))
    timeline.add(4.0, StreamEvent(content="cde", usage=Usage(5, 6)))
    # the timings follow the usage steps; the client's own count never reads usage: 3 token events
    # (no counter to count several tokens in a chunk), which the mismatch check holds against 6
    assert timeline.resolve(6) == ([2.0, 2.0, 3.0, 4.0, 4.0, 4.0], 3)
    counted = TokenTimeline(counter=len)  # one token a character
    for at, text, used in ((2.0, "ab", 2), (3.0, "", 3), (4.0, "cde", 6)):
        counted.add(at, StreamEvent(content=text, usage=Usage(5, used)))
    assert counted.resolve(6)[1] == 5  # "ab" 2, then "" and "cde" together max(2, 3) = 3


def test_timeline_uses_wire_token_counts_and_does_not_trust_a_lone_final_usage():
    timeline = TokenTimeline()
    timeline.add(1.0, StreamEvent(content="ab", tokens=2))
    timeline.add(2.0, StreamEvent(content="c", finish_reason="stop", usage=Usage(3, 9)))
    # usage seen only on the last chunk is a total, not a step: that chunk counts as 1
    assert timeline.resolve(9) == ([1.0, 1.0, 2.0], 3)


def test_timeline_survives_a_broken_counter():
    def broken(text: str) -> int:
        raise RuntimeError("tokenizer exploded")

    timeline = TokenTimeline(broken)
    timeline.add(1.0, StreamEvent(content="ab"))
    assert timeline.resolve(None) == ([1.0], None)


def test_estimated_chunk_counts_are_reconciled_with_the_servers_usage():
    from shadowreplay.replay.clients.stream_client import TokenTimeline, apportion

    assert apportion([3, 1, 4], 4) == [2, 0, 2]
    assert apportion([5, 5], 10) == [5, 5]
    assert sum(apportion([7, 2, 9, 1], 13)) == 13

    from shadowreplay.replay.clients.protocols import StreamEvent

    timeline = TokenTimeline(counter=lambda text: len(text.split()))
    for at, text in ((1.0, "a b c"), (2.0, " d"), (3.0, " e f g h")):
        timeline.add(at, StreamEvent(content=text))
    times, client = timeline.resolve(completion_tokens=4)  # the server says 4; the counter says 8
    assert len(times) == 4 and times == sorted(times) and client == 8
    assert times.count(1.0) + times.count(2.0) + times.count(3.0) == 4


def test_client_count_never_reads_the_usage():
    timeline = TokenTimeline(counter=lambda text: len(text.split()))
    for at, text in ((1.0, " a"), (2.0, ""), (3.0, " b"), (4.0, " c d")):
        timeline.add(at, StreamEvent(content=text))
    for usage in (None, 5, 6, 4, 50):
        assert timeline.resolve(usage)[1] == 5  # " a" 1, then "" and " b" max(2, 1) = 2, " c d" 2


def test_a_trailing_empty_finish_chunk_is_the_one_reading_left_to_the_usage():
    timeline = TokenTimeline()
    for at, text in ((1.0, " a"), (2.0, " b")):
        timeline.add(at, StreamEvent(content=text))
    timeline.add(3.0, StreamEvent(content="", finish_reason="stop"))
    # vLLM: the end-of-sequence token, "" with the finish reason, is counted in usage
    assert timeline.resolve(3) == ([1.0, 2.0, 3.0], 3)
    # OpenAI-style servers: a finish-only chunk with empty text carries no token
    assert timeline.resolve(2) == ([1.0, 2.0], 2)
    assert timeline.resolve(None) == ([1.0, 2.0], 2)
    assert timeline.resolve(7)[1] == 2  # any other usage is a mismatch


def test_replacement_characters_are_counted_one_each_not_re_tokenized():
    bytes_of = lambda text: len(text.encode())  # noqa: E731 - a byte-level count: U+FFFD alone is 3
    timeline = TokenTimeline(counter=bytes_of)
    for at, text in ((1.0, "a"), (2.0, ""), (3.0, "\ufffdb"), (4.0, "\u00e9")):
        timeline.add(at, StreamEvent(content=text))
    # "" and "\ufffdb" together: max(2, 1 + 1) = 2; "\u00e9" two bytes, two tokens
    assert timeline.resolve(None)[1] == 1 + 2 + 2


# -- the client's count against a healthy server and a miscounting one ---------------------------
@pytest.fixture(scope="module")
def byte_level():
    """A byte-level BPE tokenizer, the tiny model's kind, trained here on a few of Python's own sources."""
    import inspect
    import json
    import textwrap

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator([inspect.getsource(m) for m in (textwrap, json.decoder, json.encoder)], trainer)
    return tokenizer


def streamed_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each token's text as vLLM streams it, one token a chunk: incremental decoding, "" while a
    character's bytes are incomplete, U+FFFD for bytes that never make one."""
    from tokenizers.decoders import DecodeStream

    stream = DecodeStream(skip_special_tokens=True)
    return [stream.step(tokenizer, i) or "" for i in ids]


def mismatch(outcome) -> bool:
    import polars as pl

    from shadowreplay.analysis.metrics.table import token_mismatch

    frame = pl.DataFrame({"completion_tokens": [outcome.completion_tokens], "client_tokens": [outcome.client_tokens]})
    return frame.select(token_mismatch()).item()


def test_one_token_per_event_with_split_characters_shows_no_mismatch(server, byte_level):
    import random

    rng = random.Random(11)
    ids = [rng.randrange(byte_level.get_vocab_size()) for _ in range(120)]  # a random model's output
    texts = streamed_texts(byte_level, ids)
    assert "" in texts and any("\ufffd" in t for t in texts)  # split characters, as the tiny model makes them

    def count(text: str) -> int:
        return len(byte_level.encode(text, add_special_tokens=False).ids)

    assert count("".join(texts)) != len(ids)  # re-tokenizing the decoded answer does not give the tokens back
    script = {"tokens": len(ids), "token_texts": texts, "finish_in_last_chunk": True}
    outcome = send(target(server.base_url), body(**script), token_counter=count)
    assert outcome.status == "ok" and outcome.completion_tokens == len(ids) == outcome.client_tokens
    assert len(outcome.token_times) == len(ids) and mismatch(outcome) is False
    for error in (0.2, -0.2):  # a server whose usage is off by 20% is caught
        wrong = send(target(server.base_url), body(**script, usage_error=error), token_counter=count)
        assert wrong.client_tokens == len(ids) and wrong.completion_tokens == round(len(ids) * (1 + error))
        assert mismatch(wrong) is True


def test_multi_token_chunks_are_counted_by_the_tokenizer(server, byte_level):
    import inspect
    import textwrap

    ids = byte_level.encode(inspect.getsource(textwrap.dedent), add_special_tokens=False).ids[:90]
    texts = streamed_texts(byte_level, ids)

    def count(text: str) -> int:
        return len(byte_level.encode(text, add_special_tokens=False).ids)

    script = {"tokens": len(ids), "token_texts": texts, "tokens_per_chunk": 4}
    outcome = send(target(server.base_url), body(**script), token_counter=count)
    assert outcome.status == "ok" and outcome.completion_tokens == len(ids) == outcome.client_tokens
    assert mismatch(outcome) is False
    wrong = send(target(server.base_url), body(**script, usage_error=0.2), token_counter=count)
    assert wrong.client_tokens == len(ids) and mismatch(wrong) is True
    # without a tokenizer the client counts token events only: 23 chunks of up to 4 tokens
    blind = send(target(server.base_url), body(**script))
    assert blind.client_tokens == -(-len(ids) // 4) and mismatch(blind) is True
