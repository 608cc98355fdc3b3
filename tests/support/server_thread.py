"""Run an in-process aiohttp test server on its own event loop in a daemon thread, for synchronous
tests: `with ServerThread(AnthropicServer()) as server: server.base_url`.

The server object needs `async start()`, `async stop()` and a `base_url` property (the servers in
tests/support/anthropic_server.py and tests/support/azure_openai_server.py have them).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Generic, Protocol, TypeVar


class AsyncServer(Protocol):
    @property
    def base_url(self) -> str: ...

    async def start(self) -> str: ...

    async def stop(self) -> None: ...


S = TypeVar("S", bound=AsyncServer)


class ServerThread(Generic[S]):
    """`server` running in a background thread; `.server` is the object itself (for its counters)."""

    def __init__(self, server: S, timeout_s: float = 10.0):
        self.server = server
        self.timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=type(server).__name__, daemon=True)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    async def _shutdown(self) -> None:
        """Stop the server, then end the handlers still sleeping in a scripted delay."""
        await self.server.stop()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def __enter__(self) -> ServerThread[S]:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(self.timeout_s)
        return self

    def __exit__(self, *exc) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(self.timeout_s)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self.timeout_s)
            if not self._thread.is_alive():
                self._loop.close()
