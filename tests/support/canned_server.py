"""A local HTTP server that answers every POST with a canned response chosen by the request body's
`model`: a status, a Content-Type and the body's exact bytes (an error body, a JSON answer, or an
event stream written as given). It knows no API: whatever path the client posts to (OpenAI's
/chat/completions, Anthropic's /v1/messages) gets the response canned for the model named.

`with ServerThread(CannedServer({"m": Canned(500, "text/plain", b"...")})) as server:` serves it on
127.0.0.1 in a background thread (tests/support/server_thread.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiohttp import web

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Canned:
    """One response: `status`, `content_type` and `body`, sent as they are."""

    status: int
    content_type: str
    body: bytes


class CannedServer:
    """Answers POSTs to any path with the response canned for the body's `model` (404 for others)."""

    def __init__(self, responses: dict[str, Canned]):
        self.responses = dict(responses)
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        model = json.loads(await request.read()).get("model")
        canned = self.responses.get(model)
        if canned is None:
            return web.Response(status=404, text=f"no response canned for model {model!r}")
        response = web.StreamResponse(status=canned.status, headers={"Content-Type": canned.content_type})
        await response.prepare(request)
        await response.write(canned.body)
        await response.write_eof()
        return response
