"""A server that answers every request with one fixed HTTP status and records what it was asked (method,
path with query, headers), for the pre-flight endpoint checks (replay/targets/preflight.py). Run it with
tests/support/server_thread.py: `with ServerThread(StatusServer(401)) as server: server.base_url`.

`hanging_listener()` is the other case: a socket that listens (so a TCP connect succeeds) but never
answers, as a hung server does.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from aiohttp import web

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Asked:
    method: str
    path_qs: str
    headers: dict[str, str]


class StatusServer:
    def __init__(self, status: int = 200, body: str = '{"error": {"message": "scripted"}}'):
        self.status = status
        self.body = body
        self.port = 0
        self.asked: list[Asked] = []
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """The root URL (no /v1: each target kind adds its own path)."""
        return f"http://{HOST}:{self.port}"

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _answer(self, request: web.Request) -> web.Response:
        self.asked.append(Asked(request.method, request.path_qs, dict(request.headers)))
        return web.Response(status=self.status, text=self.body, content_type="application/json")


def hanging_listener() -> socket.socket:
    """A listening socket that never accepts: connects succeed (the kernel's backlog), no answer comes.
    The caller closes it."""
    sock = socket.socket()
    sock.bind((HOST, 0))
    sock.listen(16)
    return sock


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]
