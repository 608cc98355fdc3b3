"""The capture proxy (replay/capture/proxy.py) over real HTTP on 127.0.0.1: a client, the proxy and a
scripted upstream that streams OpenAI and Anthropic events chunk by chunk with gaps. Answers pass
through byte for byte with their headers and as they stream (the first chunk reaches the client
long before the last is sent); errors and 429s pass through with their headers; other paths are
proxied and not recorded; the client's key reaches the upstream and no record; an upstream that is
down gives the client one clean 502; each recorded exchange is the traffic-log row a replay needs."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from shadowreplay.replay.capture.exchange import CapturedExchange, CaptureFields
from shadowreplay.replay.capture.proxy import CaptureProxy
from tests.support.run_processes import free_port

HOST = "127.0.0.1"
GAP_S = 0.04
KEY = "sk-capture-canary-0123456789abcdef"


def sse(*events: dict | str, named: bool = False) -> list[bytes]:
    chunks = []
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event)
        name = f"event: {json.loads(data)['type']}\n" if named and data != "[DONE]" else ""
        chunks.append(f"{name}data: {data}\n\n".encode())
    return chunks


OPENAI_STREAM = sse(
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"choices": [{"index": 0, "delta": {"content": "Hello"}}]},
    {"choices": [{"index": 0, "delta": {"content": " there"}}]},
    {"choices": [{"index": 0, "delta": {"content": ", friend."}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 17, "completion_tokens": 4}},
    "[DONE]",
)
ANTHROPIC_STREAM = sse(
    {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 21, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Bonjour"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " !"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
    {"type": "message_stop"},
    named=True,
)
COMPLETION_JSON = json.dumps(
    {
        "choices": [{"index": 0, "text": "four", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1},
    }
).encode()


class Upstream:
    """The scripted upstream: what it received (headers and bodies), what it sent."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        return app

    async def _stream(
        self, request: web.Request, chunks: list[bytes], cut_after: int | None = None
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Upstream": "scripted"})
        await response.prepare(request)
        for i, chunk in enumerate(chunks):
            if cut_after is not None and i == cut_after:
                assert request.transport is not None
                request.transport.abort()  # the upstream's connection lost mid-stream
                return response
            try:
                await response.write(chunk)
            except ConnectionResetError:  # the proxy hung up (its client left)
                return response
            await asyncio.sleep(GAP_S)
        await response.write_eof()
        return response

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append({"headers": dict(request.headers), "body": body})
        if body.get("model") == "limited":
            return web.json_response(
                {"error": {"message": "rate limited", "type": "rate_limit_exceeded"}},
                status=429,
                headers={"Retry-After": "7", "x-ratelimit-remaining-requests": "0"},
            )
        return await self._stream(request, OPENAI_STREAM, cut_after=2 if body.get("model") == "cut" else None)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        self.seen.append({"headers": dict(request.headers), "body": await request.json()})
        return await self._stream(request, ANTHROPIC_STREAM)

    async def completions(self, request: web.Request) -> web.Response:
        self.seen.append({"headers": dict(request.headers), "body": await request.json()})
        return web.Response(
            body=gzip.compress(COMPLETION_JSON),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    async def models(self, request: web.Request) -> web.Response:
        self.seen.append({"headers": dict(request.headers), "raw_path": request.raw_path})
        response = web.json_response({"object": "list", "data": [{"id": "scripted"}]})
        response.set_cookie("upstream-session", "for-the-first-client-only")
        return response


async def serve(app: web.Application, port: int = 0) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://{HOST}:{bound}"


async def fetch(session: aiohttp.ClientSession, method: str, url: str | URL, **options: Any) -> dict[str, Any]:
    """A request's status, headers, body bytes and when its first and last chunks arrived."""
    started = time.monotonic()
    first = None
    chunks = []
    async with session.request(method, url, **options) as response:
        async for chunk in response.content.iter_any():
            first = first if first is not None else time.monotonic() - started
            chunks.append(chunk)
        return {
            "status": response.status,
            "headers": response.headers,
            "body": b"".join(chunks),
            "first_s": first,
            "last_s": time.monotonic() - started,
        }


def run_with_proxy(scenario, upstream_url: str | None = None, fields: CaptureFields | None = None):
    """Start the upstream and the proxy on 127.0.0.1, run `scenario(session, upstream_url, proxy_url, proxy)`;
    return its result, the recorded exchanges and the upstream."""
    upstream = Upstream()
    recorded: list[CapturedExchange] = []

    async def main():
        up_runner, up_url = await serve(upstream.app())
        proxy = CaptureProxy(upstream_url or up_url, recorded.append, fields or CaptureFields())
        proxy_runner, proxy_url = await serve(proxy.app())
        try:
            async with aiohttp.ClientSession(auto_decompress=False) as session:
                return await scenario(session, up_url, proxy_url, proxy), proxy
        finally:
            await proxy_runner.cleanup()
            await up_runner.cleanup()

    result, proxy = asyncio.run(main())
    return result, recorded, upstream, proxy


CHAT_BODY = {
    "model": "prod-model",
    "stream": True,
    "stream_options": {"include_usage": True},
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
    "max_tokens": 32,
    "temperature": 0.2,
}
HEADERS = {
    "Authorization": f"Bearer {KEY}",
    "X-Request-Id": "req-42",
    "X-Session-Id": "s-7",
    "X-Shadowreplay-Tag": "greet",
}


def test_a_streamed_chat_passes_through_byte_for_byte_as_it_streams_and_becomes_its_row():
    async def scenario(session, up_url, proxy_url, proxy):
        direct = await fetch(session, "POST", f"{up_url}/v1/chat/completions", json=CHAT_BODY, headers=HEADERS)
        proxied = await fetch(session, "POST", f"{proxy_url}/v1/chat/completions", json=CHAT_BODY, headers=HEADERS)
        return direct, proxied

    (direct, proxied), recorded, upstream, proxy = run_with_proxy(scenario)
    assert proxied["status"] == direct["status"] == 200
    assert proxied["body"] == direct["body"] == b"".join(OPENAI_STREAM)
    assert proxied["headers"]["X-Upstream"] == "scripted" and proxied["headers"]["Content-Type"] == "text/event-stream"
    streamed_s = GAP_S * (len(OPENAI_STREAM) - 1)
    assert proxied["first_s"] < proxied["last_s"] - streamed_s * 0.6, "the first chunk came on its own, not buffered"
    assert upstream.seen[1]["headers"]["Authorization"] == f"Bearer {KEY}", "the client's key reaches the upstream"
    assert upstream.seen[1]["body"] == CHAT_BODY
    (exchange,) = recorded
    row = exchange.row()
    assert KEY not in json.dumps(row) and KEY not in repr(exchange), "the key is in no record"
    assert row["request_id"] == "req-42" and row["session_id"] == "s-7" and row["tag"] == "greet"
    assert row["api"] == "chat" and json.loads(row["messages"]) == CHAT_BODY["messages"] and row["prompt"] is None
    assert json.loads(row["params"]) == {
        "stream_options": {"include_usage": True},
        "max_tokens": 32,
        "temperature": 0.2,
    }
    assert row["response_text"] == "Hello there, friend."
    assert (row["prompt_tokens"], row["completion_tokens"], row["prod_status"]) == (17, 4, "ok")
    assert row["prod_http_status"] == 200
    # The first token is the second event (the first only names the role): one gap after the request.
    assert GAP_S * 0.8 <= row["prod_ttft_ms"] / 1000 < row["prod_e2e_ms"] / 1000
    assert row["prod_e2e_ms"] / 1000 >= streamed_s * 0.9
    assert abs(row["arrival_time"] / 1e6 - time.time()) < 60
    assert proxy.counts.requests == 1 and proxy.counts.recorded == 1


def test_anthropic_messages_are_recorded_as_openai_shaped_messages_with_their_usage():
    body = {
        "model": "claude-x",
        "stream": True,
        "max_tokens": 64,
        "system": [{"type": "text", "text": "Reply in French."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
        "metadata": {"user_id": "u-9"},
    }
    fields = CaptureFields(session_field="metadata.user_id", tag_from_path=True)

    async def scenario(session, up_url, proxy_url, proxy):
        return await fetch(session, "POST", f"{proxy_url}/v1/messages", json=body, headers={"x-api-key": KEY})

    proxied, recorded, _, _ = run_with_proxy(scenario, fields=fields)
    assert proxied["body"] == b"".join(ANTHROPIC_STREAM)
    row = recorded[0].row()
    assert json.loads(row["messages"]) == [
        {"role": "system", "content": [{"type": "text", "text": "Reply in French."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
    ]
    assert row["response_text"] == "Bonjour !" and (row["prompt_tokens"], row["completion_tokens"]) == (21, 3)
    assert row["session_id"] == "u-9" and row["tag"] == "/v1/messages"
    assert json.loads(row["params"]) == {"max_tokens": 64, "metadata": {"user_id": "u-9"}}
    assert KEY not in json.dumps(row)


def test_a_compressed_plain_completion_passes_compressed_and_is_recorded_from_its_json():
    body = {"model": "m", "prompt": "2 + 2 =", "max_tokens": 2}

    async def scenario(session, up_url, proxy_url, proxy):
        return await fetch(
            session, "POST", f"{proxy_url}/v1/completions", json=body, headers={"Accept-Encoding": "gzip"}
        )

    proxied, recorded, _, _ = run_with_proxy(scenario)
    assert proxied["headers"]["Content-Encoding"] == "gzip" and gzip.decompress(proxied["body"]) == COMPLETION_JSON
    row = recorded[0].row()
    assert row["api"] == "completions" and row["prompt"] == "2 + 2 =" and row["messages"] is None
    assert row["response_text"] == "four" and (row["prompt_tokens"], row["completion_tokens"]) == (5, 1)
    assert row["prod_ttft_ms"] is None and row["prod_e2e_ms"] > 0, "a plain answer has no first-token time"


def test_a_429_passes_through_with_its_headers_and_other_paths_are_proxied_unrecorded():
    async def scenario(session, up_url, proxy_url, proxy):
        limited = await fetch(
            session, "POST", f"{proxy_url}/v1/chat/completions", json={**CHAT_BODY, "model": "limited"}
        )
        models = await fetch(session, "GET", f"{proxy_url}/v1/models?limit=5")
        return limited, models

    (limited, models), recorded, _, proxy = run_with_proxy(scenario)
    assert limited["status"] == 429 and limited["headers"]["Retry-After"] == "7"
    assert limited["headers"]["x-ratelimit-remaining-requests"] == "0"
    assert json.loads(limited["body"])["error"]["type"] == "rate_limit_exceeded"
    assert models["status"] == 200 and json.loads(models["body"])["data"][0]["id"] == "scripted"
    (exchange,) = recorded  # /v1/models is not an exchange to replay
    row = exchange.row()
    assert (
        (row["prod_status"], row["prod_http_status"]) == ("http_error", 429)
        and row["response_text"] is None
        and row["prod_ttft_ms"] is None
    )
    assert proxy.counts.requests == 2 and proxy.counts.recorded == 1


def test_requests_go_on_as_sent_no_header_added_no_cookie_kept_the_path_not_requoted():
    """The proxy's own HTTP client adds nothing: no User-Agent or Accept the client did not send, no
    cookie one client's response set on another client's request, the path and query byte for byte."""
    path = "/v1/models?name=a%2Fb&q=%7Ex+y&empty="

    async def scenario(session, up_url, proxy_url, proxy):
        raw = URL(f"{proxy_url}{path}", encoded=True)  # our client must not requote it either
        first = await fetch(session, "GET", raw, skip_auto_headers=["User-Agent", "Accept"])
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as other:
            second = await fetch(other, "GET", f"{proxy_url}/v1/models", headers={"User-Agent": "client/2"})
        return first, second

    (first, second), _, upstream, _ = run_with_proxy(scenario)
    assert first["status"] == second["status"] == 200
    assert "upstream-session=for-the-first-client-only" in first["headers"]["Set-Cookie"]  # passed back
    sent_first, sent_second = upstream.seen
    assert sent_first["raw_path"] == path
    assert "User-Agent" not in sent_first["headers"] and "Accept" not in sent_first["headers"]
    assert sent_second["headers"]["User-Agent"] == "client/2" and "Cookie" not in sent_second["headers"]


def test_an_upstream_that_is_down_gives_one_clean_502_and_a_cut_stream_is_cut():
    dead = f"http://{HOST}:{free_port()}"

    async def down(session, up_url, proxy_url, proxy):
        return await fetch(session, "POST", f"{proxy_url}/v1/chat/completions", json=CHAT_BODY)

    answer, recorded, _, proxy = run_with_proxy(down, upstream_url=dead)
    assert answer["status"] == 502
    error = json.loads(answer["body"])["error"]
    assert (
        error["type"] == "upstream_unavailable"
        and dead in error["message"]
        and "Traceback" not in answer["body"].decode()
    )
    assert recorded[0].row()["prod_status"] == "connection_error" and recorded[0].row()["prod_http_status"] == 502
    assert proxy.counts.upstream_unavailable == 1

    async def cut(session, up_url, proxy_url, proxy):
        with pytest.raises(aiohttp.ClientPayloadError):
            await fetch(session, "POST", f"{proxy_url}/v1/chat/completions", json={**CHAT_BODY, "model": "cut"})

    _, recorded, _, proxy = run_with_proxy(cut)
    row = recorded[0].row()
    assert (
        (row["prod_status"], row["prod_http_status"]) == ("stream_error", 502)
        and row["response_text"] is None
        and proxy.counts.upstream_lost == 1
    )


def test_a_key_header_cannot_be_chosen_as_the_session_or_tag():
    with pytest.raises(ValueError, match="credentials"):
        CaptureFields(session_header="Authorization")


def test_a_client_that_leaves_mid_stream_is_recorded_as_499():
    async def scenario(session, up_url, proxy_url, proxy):
        async with session.post(f"{proxy_url}/v1/chat/completions", json=CHAT_BODY) as response:
            await response.content.readany()
            response.close()  # the client hangs up after the first chunk
        for _ in range(100):  # the proxy notices at its next write to the client
            await asyncio.sleep(0.02)
            if proxy.counts.in_flight == 0:
                return

    _, recorded, _, proxy = run_with_proxy(scenario)
    assert proxy.counts.client_closed == 1
    assert (recorded[0].row()["prod_status"], recorded[0].row()["prod_http_status"]) == ("cancelled", 499)
