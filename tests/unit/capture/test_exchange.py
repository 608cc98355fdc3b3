"""A captured exchange as logic without I/O (replay/capture/exchange.py): which requests are recorded,
what a non-streamed Anthropic answer and a broken stream leave in the row, encodings it cannot read,
and the key headers it never keeps."""

from __future__ import annotations

import json

from shadowreplay.replay.capture.exchange import CapturedExchange, CaptureFields, route_of


def exchange(path: str, body: object, headers: dict[str, str] | None = None) -> CapturedExchange:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return CapturedExchange(path, headers or {}, raw, arrival_us=1_700_000_000_000_000, received_s=10.0)


def test_recorded_routes():
    assert route_of("/v1/chat/completions")[0] == "chat"
    assert route_of("/openai/v1/completions/")[0] == "completions"
    assert route_of("/v1/messages")[0] == "chat"
    assert route_of("/v1/models") is None and route_of("/health") is None
    assert not exchange("/v1/chat/completions", b"not json").recordable
    assert not exchange("/v1/chat/completions", [1, 2]).recordable
    assert not exchange("/v1/embeddings", {"input": "x"}).recordable


def test_a_plain_anthropic_answer_with_cache_tokens():
    found = exchange("/v1/messages", {"model": "c", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9})
    found.response_started(200, "application/json")
    answer = {
        "content": [{"type": "text", "text": "Hel"}, {"type": "tool_use", "id": "t"}, {"type": "text", "text": "lo"}],
        "usage": {"input_tokens": 3, "cache_read_input_tokens": 40, "output_tokens": 2},
    }
    found.feed(json.dumps(answer).encode()[:20], 10.1)
    found.feed(json.dumps(answer).encode()[20:], 10.2)
    found.finish(10.25)
    row = found.row()
    assert row["response_text"] == "Hello" and (row["prompt_tokens"], row["completion_tokens"]) == (43, 2)
    assert row["prod_e2e_ms"] == 250.0 and row["prod_ttft_ms"] is None and row["prod_status"] == "ok"
    assert (
        row["prod_http_status"] == 200 and row["arrival_time"] == 1_700_000_000_000_000 and len(row["request_id"]) == 32
    )


def test_malformed_events_are_passed_over_and_the_rest_recorded():
    found = exchange("/v1/chat/completions", {"model": "m", "messages": [], "stream": True})
    found.response_started(200, "text/event-stream; charset=utf-8")
    found.feed(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {broken\n\n', 10.05)
    found.feed(b'data: {"choices":[{"delta":{"content":"b"}}]}\n\ndata: [DONE]\n\n', 10.1)
    found.finish(10.1)
    row = found.row()
    assert row["response_text"] == "ab" and round(row["prod_ttft_ms"]) == 50


def test_an_encoding_it_cannot_read_records_no_answer():
    found = exchange("/v1/chat/completions", {"model": "m", "messages": []})
    found.response_started(200, "application/json", "br")
    found.feed(b"\x8b\x02\x80binary", 10.1)
    found.finish(10.2)
    assert found.row()["response_text"] is None and found.row()["prod_status"] == "ok"


def test_key_headers_are_never_kept_and_fields_come_from_headers_or_the_body():
    headers = {"authorization": "Bearer sk-x", "x-api-key": "sk-y", "cookie": "c=1", "x-team": "search"}
    body = {"model": "m", "messages": [], "user": "u-1", "metadata": {"tenant": 7}}
    found = exchange("/v1/chat/completions", body, headers)
    assert set(found.headers) == {"x-team"}
    found.fields = CaptureFields(tag_header="x-team", session_field="metadata.tenant")
    found.response_started(500, "application/json")
    found.finish(10.3)
    row = found.row()
    assert (row["tag"], row["session_id"], row["prod_http_status"], row["response_text"]) == ("search", "7", 500, None)
    assert row["prod_status"] == "http_error"
