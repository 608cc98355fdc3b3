"""A local server speaking Anthropic's Messages API streaming format, on a script.

Written from Anthropic's public API reference (Messages, Streaming Messages, Errors, Rate limits):
- `POST /v1/messages`; `x-api-key` checked against the server's key (401 `authentication_error`
  when missing or wrong); `anthropic-version` required (400 otherwise); the body validated as the
  API does: `model`, `max_tokens` (a positive integer) and a non-empty `messages` required, roles
  `user`/`assistant` only (a system prompt goes in `system`), `temperature` within 0..1, and any
  field the API does not define refused with "Extra inputs are not permitted". So a request the
  client translated wrongly fails here as it would at Anthropic.
- Errors: HTTP status with `{"type": "error", "error": {"type": ..., "message": ...},
  "request_id": ...}` and a `request-id` header; types by status as Anthropic's (400
  invalid_request_error, 401 authentication_error, 403 permission_error, 404 not_found_error,
  429 rate_limit_error, 500 api_error, 529 overloaded_error). A 429 may carry `retry-after` and
  the `anthropic-ratelimit-requests-{limit,remaining,reset}` headers (reset: RFC 3339).
- The stream: `event: message_start` (the message with `usage.input_tokens`, cache read tokens
  and `output_tokens: 1`), a `ping`, per content block `content_block_start` (empty text or
  thinking), `content_block_delta` events (`thinking_delta` then a `signature_delta` for a
  thinking block, `text_delta` for text), `content_block_stop`; then `message_delta`
  (`stop_reason` `max_tokens` or `end_turn`, cumulative `usage.output_tokens`) and `message_stop`.
  Every event is `event: <type>` + `data: <JSON whose type repeats it>` + a blank line. An error
  inside the stream is `event: error` with the error body, after which the stream ends.

Output tokens are the words " t<i>" (a whitespace split counts them; thinking tokens count among
the output tokens, as at Anthropic). Input tokens are the words of the system prompt and messages.
Token deltas go out one every `itl_ms` after `ttft_ms` (absolute schedule from the request's
arrival), each carrying `tokens_per_delta` tokens.

What a request gets is an `AnthropicScript`: the server's default, replaced by `scripts[model]`
when the request's model has one, then updated by a directive in the text of the last user
message: `[[script {"status": 429, "retry_after": "1"}]]` (so each row of a traffic log can carry
its own behaviour).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import web

HOST = "127.0.0.1"
API_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "container",
        "mcp_servers",
    }
)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
SCRIPT_DIRECTIVE = re.compile(r"\[\[script (\{.*?\})\]\]", re.DOTALL)
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"


@dataclass(frozen=True)
class AnthropicScript:
    """How the server answers one request.

    `tokens` output tokens (None: the request's `max_tokens`; never more than it), the first
    `thinking_tokens` of them in a thinking block. `cached_tokens` of the input are reported as
    cache reads. `status` >= 400 answers with Anthropic's error body instead, to the first
    `fail_attempts` requests carrying this script (None: to all), with `retry_after` as the
    retry-after header and, when `ratelimit_reset_in_s` is set, the requests limit reported
    exhausted until that many seconds from now. `error_after_tokens` sends an `overloaded_error`
    event after that many tokens and ends the stream. The `echo_*` switches make a careless server:
    the request's headers in the error message (HTTP or in-stream), or the API key in the answer text.
    `broken_http` answers with a malformed HTTP response whose header line holds the key.
    """

    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    tokens: int | None = None
    tokens_per_delta: int = 1
    thinking_tokens: int = 0
    cached_tokens: int = 0
    ping_after_start: bool = True
    status: int = 200
    fail_attempts: int | None = None
    retry_after: str | None = None
    ratelimit_reset_in_s: float | None = None
    error_after_tokens: int | None = None
    echo_headers_in_error: bool = False
    echo_key_in_answer: bool = False
    broken_http: bool = False

    def updated(self, overrides: dict) -> AnthropicScript:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown script fields: {', '.join(unknown)}")
        return dataclasses.replace(self, **overrides)


class InvalidRequest(Exception):
    """A request the Messages API would refuse with 400 invalid_request_error."""


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return ""


def validate(body) -> None:
    """Refuse what the Messages API refuses (the checks this server makes; see the docstring)."""
    if not isinstance(body, dict):
        raise InvalidRequest("body: must be a JSON object")
    for field in body:
        if field not in API_FIELDS:
            raise InvalidRequest(f"{field}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("model: Field required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequest("max_tokens: Field required (a positive integer)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: Field required (a non-empty list)")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise InvalidRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise InvalidRequest(f"messages.{i}.content: Field required")
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        raise InvalidRequest("temperature: Input should be less than or equal to 1")
    if "stop_sequences" in body and not (
        isinstance(body["stop_sequences"], list) and all(isinstance(s, str) for s in body["stop_sequences"])
    ):
        raise InvalidRequest("stop_sequences: Input should be a valid list of strings")


class AnthropicServer:
    """The server in the current event loop: `await start()` / `await stop()`, or `async with`;
    in a thread: `tests.support.server_thread.ServerThread(AnthropicServer(...))`."""

    def __init__(
        self,
        script: AnthropicScript | None = None,
        api_key: str | None = None,
        port: int = 0,
        scripts: dict[str, AnthropicScript] | None = None,
    ):
        self.script = script or AnthropicScript()
        self.scripts = dict(scripts or {})
        self.api_key = api_key
        self.port = port
        self.requests: list[dict] = []  # every request body received, in order
        self.headers: list[dict[str, str]] = []  # the headers of each request, in order
        self._failures: dict[str, int] = {}  # script directive -> failures answered so far
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"  # the API root: the client appends /v1/messages

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port).start()
        self.port = self._runner.addresses[0][1]
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> AnthropicServer:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # -- handling ----------------------------------------------------------------------------
    def _script_for(self, body: dict) -> tuple[AnthropicScript, str]:
        model = body.get("model")
        script = self.script if model is None else self.scripts.get(model, self.script)
        users = [m for m in body["messages"] if m.get("role") == "user"]
        directive = SCRIPT_DIRECTIVE.search(_text_of(users[-1]["content"])) if users else None
        if directive is None:
            return script, ""
        return script.updated(json.loads(directive.group(1))), directive.group(0)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        arrived = time.perf_counter()
        self.headers.append(dict(request.headers))
        given_key = request.headers.get("x-api-key")
        if self.api_key is not None and given_key != self.api_key:
            return error_response(401, "x-api-key header is required" if given_key is None else "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return error_response(400, "anthropic-version: header is required")
        try:
            body = await request.json()
        except ValueError:
            return error_response(400, "There was an issue with the body of your request: not valid JSON")
        self.requests.append(body)
        try:
            validate(body)
            script, directive = self._script_for(body)
        except InvalidRequest as exc:
            return error_response(400, str(exc))
        except ValueError as exc:
            return error_response(400, f"bad script directive: {exc}")
        if script.broken_http:
            return self._broken_http(request, given_key or "")
        if script.status >= 400 and self._still_failing(script, directive):
            return self._scripted_error(request, script)
        if not body.get("stream"):
            return error_response(400, "this test server answers streaming requests only (stream: true)")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "request-id": _request_id(),
            }
        )
        await response.prepare(request)
        try:
            await _Stream(response, body, script, given_key or "", dict(request.headers)).run(arrived)
        except ConnectionError:
            pass  # the client went away
        return response

    def _still_failing(self, script: AnthropicScript, directive: str) -> bool:
        if script.fail_attempts is None:
            return True
        done = self._failures.get(directive, 0)
        if done >= script.fail_attempts:
            return False
        self._failures[directive] = done + 1
        return True

    def _scripted_error(self, request: web.Request, script: AnthropicScript) -> web.Response:
        headers: dict[str, str] = {}
        if script.retry_after is not None:
            headers["retry-after"] = script.retry_after
        if script.ratelimit_reset_in_s is not None:
            reset = datetime.now(UTC) + timedelta(seconds=script.ratelimit_reset_in_s)
            headers.update(
                {
                    "anthropic-ratelimit-requests-limit": "50",
                    "anthropic-ratelimit-requests-remaining": "0",
                    "anthropic-ratelimit-requests-reset": reset.isoformat().replace("+00:00", "Z"),
                    "anthropic-ratelimit-tokens-limit": "40000",
                    "anthropic-ratelimit-tokens-remaining": "39000",
                    "anthropic-ratelimit-tokens-reset": (reset + timedelta(seconds=30))
                    .isoformat()
                    .replace("+00:00", "Z"),
                }
            )
        message = {
            401: "invalid x-api-key",
            403: "Your API key does not have permission to use the specified resource.",
            429: "Number of request tokens has exceeded your per-minute rate limit",
            500: "Internal server error",
            529: "Overloaded",
        }.get(script.status, f"scripted failure with status {script.status}")
        if script.echo_headers_in_error:
            message += f" (request headers: {dict(request.headers)})"
        return error_response(script.status, message, headers)

    def _broken_http(self, request: web.Request, key: str) -> web.Response:
        """A malformed response (a header line without a colon, holding the key) and a closed socket."""
        transport = request.transport
        if transport is not None:
            transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                + f"broken header line for key {key}\r\n\r\n".encode()
            )
            transport.close()
        return web.Response(status=500)  # never reaches the client: the connection is closed


class _Stream:
    """Writes one Messages API event stream."""

    def __init__(self, response: web.StreamResponse, body: dict, script: AnthropicScript, key: str, headers: dict):
        self.response = response
        self.body = body
        self.script = script
        self.key = key
        self.headers = headers

    async def event(self, kind: str, data: dict) -> None:
        await self.response.write(
            f"event: {kind}\ndata: {json.dumps({'type': kind, **data}, separators=(',', ':'))}\n\n".encode()
        )

    def input_tokens(self) -> int:
        words = len(_text_of(self.body.get("system")).split())
        words += sum(len(_text_of(m.get("content")).split()) for m in self.body["messages"])
        return words

    async def run(self, arrived: float) -> None:
        script, body = self.script, self.body
        max_tokens = body["max_tokens"]
        tokens = min(script.tokens if script.tokens is not None else max_tokens, max_tokens)
        thinking = min(script.thinking_tokens, tokens)
        words = self.input_tokens()
        cached = min(script.cached_tokens, words)
        message = {
            "id": "msg_" + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": words - cached,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": cached,
                "output_tokens": 1,
            },
        }
        await self.event("message_start", {"message": message})
        if script.ping_after_start:
            await self.event("ping", {})
        sent = 0
        delta_index = 0
        blocks = [("thinking", thinking), ("text", tokens - thinking)]
        index = 0
        for kind, count in blocks:
            if count <= 0 and not (kind == "text" and tokens == 0):
                continue
            start_block = {"type": "thinking", "thinking": ""} if kind == "thinking" else {"type": "text", "text": ""}
            await self.event("content_block_start", {"index": index, "content_block": start_block})
            end = sent + count
            while sent < end:
                if script.error_after_tokens is not None and sent >= script.error_after_tokens:
                    error_message = "Overloaded"
                    if script.echo_headers_in_error:
                        error_message += f" (request headers: {self.headers})"
                    await self.event("error", {"error": {"type": "overloaded_error", "message": error_message}})
                    return
                k = min(script.tokens_per_delta, end - sent)
                await _sleep_until(arrived + (script.ttft_ms + delta_index * script.itl_ms) / 1000.0)
                text = "".join(f" t{sent + j}" for j in range(k))
                if kind == "thinking":
                    delta = {"type": "thinking_delta", "thinking": text}
                else:
                    if script.echo_key_in_answer and sent == 0:
                        text += f" (your key is {self.key})"
                    delta = {"type": "text_delta", "text": text}
                await self.event("content_block_delta", {"index": index, "delta": delta})
                sent += k
                delta_index += 1
            if kind == "thinking":
                await self.event(
                    "content_block_delta",
                    {"index": index, "delta": {"type": "signature_delta", "signature": SIGNATURE}},
                )
            await self.event("content_block_stop", {"index": index})
            index += 1
        stop_reason = "max_tokens" if tokens == max_tokens else "end_turn"
        await self.event(
            "message_delta",
            {"delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": {"output_tokens": tokens}},
        )
        await self.event("message_stop", {})


def _request_id() -> str:
    return "req_" + uuid.uuid4().hex[:24]


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """Anthropic's error shape for `status`."""
    request_id = _request_id()
    body = {
        "type": "error",
        "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
        "request_id": request_id,
    }
    return web.json_response(body, status=status, headers={"request-id": request_id, **(headers or {})})


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
