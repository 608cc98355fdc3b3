"""A local OpenAI-compatible streaming server that misbehaves on purpose, on a script.

It speaks OpenAI's streaming format exactly: `chat.completion.chunk` events (role-only first chunk,
content or `reasoning_content` chunks, a finish chunk with an empty delta, a usage-only final chunk
with `choices: []` when `stream_options.include_usage` is set, `"usage": null` on the others) or
`text_completion` events for /v1/completions, then `data: [DONE]`. Every output token is the text
" t<i>" (so a whitespace split counts tokens), and usage reports the true number of tokens sent.

What a request gets is a `Script`: the server's default script (constructor or command line)
updated by the request body's `"faulty"` object, e.g. `{"faulty": {"ttft_ms": 50, "itl_ms": 5}}`
or `{"faulty": {"fault": "reset", "fault_after_tokens": 3}}` (a target config can set it through
`extra_body`). The number of tokens is the body's `max_tokens` when given, else `tokens`.
Token i (0-based) is sent `ttft_ms + i * itl_ms` after the request arrived (absolute schedule, so
delays do not accumulate).

With `slots=k` the server is one of known capacity: it serves at most k requests at once, first come
first served, and a request's script clock starts when it gets a slot (the time before is its
queueing: TTFT = wait + ttft_ms). With a fixed script of `tokens` tokens its capacity is
k / (ttft_ms + (tokens - 1) x itl_ms) requests a second.

Use it in-process (`async with FaultyServer() as server: server.base_url`), in a background thread
(`with FaultyServerThread() as server:`), or as its own process:
`python tests/support/faulty_server.py --port 8123 --ttft-ms 50 --itl-ms 10`. It binds 127.0.0.1 only.
GET /fault-log answers its own record of what it served (`FaultyServer.fault_log`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import socket
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from tests.support.server_thread import ServerThread

HOST = "127.0.0.1"
Fault = Literal["none", "reset", "stall", "invalid_json", "malformed_sse", "stream_error", "eof"]
FAULTS: tuple[str, ...] = ("none", "reset", "stall", "invalid_json", "malformed_sse", "stream_error", "eof")
LINE_ENDINGS = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}


@dataclass(frozen=True)
class Script:
    """How the server answers one request.

    Normal streaming: the first token `ttft_ms` after the request, then one chunk every `itl_ms`
    carrying `tokens_per_chunk` tokens; the first `reasoning_tokens` tokens go out as
    `reasoning_content`; every `empty_text_every`-th token chunk carries "" (a token whose text is
    held back, as vLLM does when a token ends inside a UTF-8 character; usage still counts it);
    `finish_in_last_chunk` puts the finish reason on the last token chunk (vLLM style) instead of a
    separate chunk with an empty delta (OpenAI style). `token_texts` gives the tokens' texts in
    order, cycled (e.g. "" for the first bytes of a split character, as vLLM sends them), instead
    of " t<i>"; `usage_error` makes usage miscount: it reports round(tokens x (1 + usage_error)).
    `status` >= 400 answers with an OpenAI error body (and `retry_after` as Retry-After) instead.
    `fault` after `fault_after_tokens` tokens: `reset` (TCP reset), `stall` (pause `stall_ms`, then
    go on), `invalid_json` (a data line that is not JSON, then the rest), `malformed_sse` (lines
    that are not SSE, then the body ends), `stream_error` (an OpenAI error object in the stream,
    then [DONE]), `eof` (the body ends cleanly: no finish reason, no [DONE]).
    `send_done` and `send_usage` switch off [DONE] and the usage chunk; `line_ending` is lf, crlf
    or cr; `comments` adds an SSE comment line before every event.
    `tag` names the request in the server's fault log (`FaultyServer.fault_log`, GET /fault-log): what it
    served to each tag, attempt by attempt; with a tag, `fault_attempts` N > 0 acts out `status` and
    `fault` on the first N requests carrying it only (a 429 that its retry gets past), the later ones
    stream normally.
    `answer_json` answers 200 with a plain JSON completion, as a server that ignores `stream: true`;
    `echo_headers_in_error` puts the request's Authorization header into the error message (a
    careless server), to prove the client scrubs the key.
    """

    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    tokens: int = 8
    tokens_per_chunk: int = 1
    reasoning_tokens: int = 0
    empty_text_every: int = 0
    finish_in_last_chunk: bool = False
    status: int = 200
    retry_after: str | None = None
    fault: Fault = "none"
    fault_after_tokens: int = 0
    stall_ms: float = 0.0
    send_done: bool = True
    send_usage: bool = True
    line_ending: str = "lf"
    comments: bool = False
    answer_json: bool = False
    echo_headers_in_error: bool = False
    token_texts: list[str] | None = None
    usage_error: float = 0.0
    tag: str | None = None
    fault_attempts: int = 0

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"fault must be one of {', '.join(FAULTS)}, not {self.fault!r}")
        if self.line_ending not in LINE_ENDINGS:
            raise ValueError(f"line_ending must be one of {', '.join(LINE_ENDINGS)}")
        if self.tokens_per_chunk < 1 or self.tokens < 0:
            raise ValueError("tokens_per_chunk must be >= 1 and tokens >= 0")
        if self.fault_attempts < 0:
            raise ValueError("fault_attempts must be >= 0")

    @property
    def served_kind(self) -> str:
        """What this script serves, as the fault log counts it: `status_<code>`, the fault, or `none`."""
        return f"status_{self.status}" if self.status >= 400 else self.fault

    def updated(self, overrides: dict) -> Script:
        """This script with the fields of a request's `faulty` object replaced."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown script fields: {', '.join(unknown)}")
        return dataclasses.replace(self, **overrides)


class _Stream:
    """Writes one SSE response in OpenAI's chunk format."""

    def __init__(self, response: web.StreamResponse, script: Script, api: str, model: str):
        self.response = response
        self.script = script
        self.api = api
        self.model = model
        self.id = ("chatcmpl-" if api == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.newline = LINE_ENDINGS[script.line_ending]

    async def event(self, data: str) -> None:
        nl = self.newline
        prefix = f": keep-alive{nl}" if self.script.comments else ""
        await self.response.write(f"{prefix}data: {data}{nl}{nl}".encode())

    async def chunk(self, choices: list[dict], usage: dict | None = None, with_usage_field: bool = False) -> None:
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.api == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None or with_usage_field:
            obj["usage"] = usage
        await self.event(json.dumps(obj, separators=(",", ":")))

    def choice(
        self,
        text: str | None = None,
        reasoning: str | None = None,
        role: bool = False,
        finish_reason: str | None = None,
    ) -> dict:
        if self.api == "completions":
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        delta: dict = {}
        if role:
            delta["role"] = "assistant"
            delta["content"] = ""
        if reasoning is not None:
            delta["reasoning_content"] = reasoning
        if text is not None:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


class FaultyServer:
    """The server in the current event loop: `await start()` / `await stop()`, or `async with`."""

    def __init__(self, script: Script | None = None, port: int = 0, slots: int = 0):
        self.script = script or Script()
        self.port = port
        self.slots = slots  # 0: no limit
        self._slot_gate: asyncio.Semaphore | None = None
        self.requests_seen = 0
        self.client_ports: list[int] = []  # the client's port of each request, in arrival order
        # The server's own fault log: requests served per kind (Script.served_kind; `bad_request` for a
        # body it could not read), and per tagged request the kinds it got, attempt by attempt.
        self.served: dict[str, int] = {}
        self.served_by_tag: dict[str, list[str]] = {}
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/fault-log", self._fault_log)
        return app

    async def start(self) -> str:
        if self.slots:
            self._slot_gate = asyncio.Semaphore(self.slots)  # FIFO: waiters are woken in arrival order
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the port actually bound (port 0: a free one)
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FaultyServer:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def fault_log(self) -> dict:
        """What the server served: `requests`, `served` (count per kind) and `by_tag` (tag -> kinds)."""
        return {"requests": self.requests_seen, "served": dict(self.served), "by_tag": dict(self.served_by_tag)}

    def _log_served(self, script: Script) -> Script:
        """`script` as served to this request (a tagged one past its `fault_attempts` streams normally),
        counted in the fault log."""
        if script.tag is not None:
            attempts = self.served_by_tag.setdefault(script.tag, [])
            if script.fault_attempts and len(attempts) >= script.fault_attempts:
                script = dataclasses.replace(script, status=200, retry_after=None, fault="none")
            attempts.append(script.served_kind)
        kind = script.served_kind
        self.served[kind] = self.served.get(kind, 0) + 1
        return script

    # -- handlers ----------------------------------------------------------------------------
    async def _fault_log(self, request: web.Request) -> web.Response:
        return web.json_response(self.fault_log())

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "faulty", "object": "model", "owned_by": "tests"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "chat")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "completions")

    def script_for(self, body: dict, script: Script) -> Script:
        """The script one request gets, from its body (which it may change); a subclass answers by content
        (tests/support/answer_server.py). Here: the script as the body's `faulty` object made it."""
        return script

    def _arrival(self, request: web.Request) -> float:
        """The moment the script's clock starts for `request` (perf_counter): when its handler starts.
        Called once per request, first thing in its handler."""
        return time.perf_counter()

    async def _serve(self, request: web.Request, api: str) -> web.StreamResponse:
        arrived = self._arrival(request)
        self.requests_seen += 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.client_ports.append(peer[1] if peer else -1)
        try:
            body = await request.json()
            script = self.script_for(body, self.script.updated(body.get("faulty") or {}))
        except (ValueError, TypeError) as exc:
            self.served["bad_request"] = self.served.get("bad_request", 0) + 1
            return _error_response(400, f"bad request for the faulty server: {exc}", "invalid_request_error")
        script = self._log_served(script)
        if script.status >= 400:
            headers = {"Retry-After": script.retry_after} if script.retry_after is not None else None
            kind = "rate_limit_exceeded" if script.status == 429 else "server_error"
            message = f"scripted failure with status {script.status}"
            if script.echo_headers_in_error:
                message += f" (request had Authorization: {request.headers.get('Authorization')})"
            return _error_response(script.status, message, kind, headers)
        if script.answer_json:
            return web.json_response({"id": "cmpl-json", "object": "chat.completion", "choices": []})
        if not body.get("stream"):
            return _error_response(400, "the faulty server only streams; set stream: true", "invalid_request_error")
        if self._slot_gate is not None:
            async with self._slot_gate:
                return await self._respond(request, api, body, script, time.perf_counter())
        return await self._respond(request, api, body, script, arrived)

    async def _respond(
        self, request: web.Request, api: str, body: dict, script: Script, arrived: float
    ) -> web.StreamResponse:
        tokens = int(body["max_tokens"]) if body.get("max_tokens") is not None else script.tokens
        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and script.send_usage
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        stream = _Stream(response, script, api, str(body.get("model", "faulty")))
        try:
            await self._stream(request, stream, script, tokens, include_usage, arrived)
        except (ConnectionResetError, ConnectionError):
            return response  # the client went away; nothing more to send
        return response

    async def _stream(
        self, request: web.Request, stream: _Stream, script: Script, tokens: int, include_usage: bool, arrived: float
    ) -> None:
        if stream.api == "chat":
            await stream.chunk([stream.choice(role=True)], with_usage_field=include_usage)
        sent = 0
        chunk_index = 0
        while sent < tokens:
            if script.fault != "none" and sent >= script.fault_after_tokens:
                if await self._fault(request, stream, script):
                    return
                script = dataclasses.replace(script, fault="none")
            count = min(script.tokens_per_chunk, tokens - sent)
            await _sleep_until(arrived + (script.ttft_ms + sent * script.itl_ms / script.tokens_per_chunk) / 1000.0)
            chunk_index += 1
            texts = script.token_texts
            text = "".join(texts[(sent + j) % len(texts)] if texts else f" t{sent + j}" for j in range(count))
            if script.empty_text_every and chunk_index % script.empty_text_every == 0:
                text = ""
            last = sent + count == tokens
            finish = "length" if last and script.finish_in_last_chunk else None
            if sent < script.reasoning_tokens:
                choice = stream.choice(reasoning=text, finish_reason=finish)
            else:
                choice = stream.choice(text=text, finish_reason=finish)
            await stream.chunk([choice], with_usage_field=include_usage)
            sent += count
        if script.fault != "none" and await self._fault(request, stream, script):
            return
        if not script.finish_in_last_chunk or tokens == 0:
            await stream.chunk([stream.choice(finish_reason="length")], with_usage_field=include_usage)
        if include_usage:
            prompt_tokens = 7
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": round(tokens * (1.0 + script.usage_error)),
                "total_tokens": prompt_tokens + round(tokens * (1.0 + script.usage_error)),
            }
            await stream.chunk([], usage=usage)
        if script.send_done:
            await stream.event("[DONE]")

    async def _fault(self, request: web.Request, stream: _Stream, script: Script) -> bool:
        """Act out the script's fault; True when the response must end here."""
        nl = stream.newline
        if script.fault == "reset":
            _reset(request)
            return True
        if script.fault == "stall":
            await asyncio.sleep(script.stall_ms / 1000.0)
            return False
        if script.fault == "invalid_json":
            await stream.event('{"id": "broken", "choices": [')
            return False
        if script.fault == "malformed_sse":
            await stream.response.write(f'this is not{nl}an event stream{nl}data {{"x": 1}}{nl}'.encode())
            return True
        if script.fault == "stream_error":
            error = {"error": {"message": "scripted error inside the stream", "type": "server_error", "code": 500}}
            await stream.event(json.dumps(error))
            await stream.event("[DONE]")
            return True
        return script.fault == "eof"


def _reset(request: web.Request) -> None:
    """Close the connection with a TCP RST (SO_LINGER 0), dropping anything not yet sent."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    raise ConnectionResetError("scripted reset")


def _error_response(status: int, message: str, kind: str, headers: dict | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}
    return web.json_response(body, status=status, headers=headers)


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


class FaultyServerThread(ServerThread[FaultyServer]):
    """The server on its own event loop in a daemon thread (for synchronous tests):
    `with FaultyServerThread(script) as server: server.base_url`."""

    def __init__(self, script: Script | None = None, port: int = 0, start_timeout_s: float = 10.0, slots: int = 0):
        super().__init__(FaultyServer(script, port, slots), start_timeout_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Scripted, misbehaving OpenAI-compatible streaming server (127.0.0.1 only)."
    )
    parser.add_argument("--port", type=int, required=True, help="port to bind on 127.0.0.1 (0: a free one, printed)")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="first token this many ms after the request")
    parser.add_argument("--itl-ms", type=float, default=0.0, help="then one chunk every this many ms")
    parser.add_argument("--tokens", type=int, default=8, help="output tokens when the request gives no max_tokens")
    parser.add_argument("--tokens-per-chunk", type=int, default=1)
    parser.add_argument("--slots", type=int, default=0, help="serve at most this many requests at once (0: no limit)")
    args = parser.parse_args(argv)
    script = Script(
        ttft_ms=args.ttft_ms, itl_ms=args.itl_ms, tokens=args.tokens, tokens_per_chunk=args.tokens_per_chunk
    )

    async def serve() -> None:
        server = FaultyServer(script, args.port, args.slots)
        await server.start()
        print(f"faulty server listening on {server.base_url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
