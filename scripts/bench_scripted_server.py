"""The benchmark's scripted truth: tests/faulty_server.py's server, run so that its timing is exact
to well under a millisecond, and able to say how exact it was.

Run as its own process (the benchmark pins it to its own core with `taskset`):
`python scripts/bench_scripted_server.py --port P --ttft-ms X --itl-ms Y --tokens N`.
Every request gets its first token X ms after it arrived, then one token every Y ms on an absolute
schedule (the faulty server's `Script`), one token per chunk, the finish reason on the last token
chunk (as vLLM streams), usage in a final chunk when asked.

Two things are added to the faulty server, without changing its code:
- **Timer precision.** asyncio's default selector (epoll) sleeps in whole milliseconds, rounded up,
  so a token scripted at t would leave anywhere in [t, t + 1 ms), and on this VM a timer wake-up
  comes a further 0.2-0.3 ms late. This process runs the server on a `select(2)` event loop
  (microsecond timeouts) and waits the last `--spin-ms` (default 1 ms) before each token by
  yielding to the loop instead of sleeping. select() takes file descriptors below 1024 only,
  which bounds the number of open connections; the benchmark stays far below it.
- **Self-measurement.** Each token's send is stamped against its scripted moment (`lateness`), and
  each request's arrival and the process's CPU time are kept. `GET /bench/stats` answers them as
  JSON; `POST /bench/reset` clears them. The benchmark uses them to say how true the server's own
  timing was, to define its capacity (CPU seconds per request) and to see every tool's send
  schedule on one clock.
"""

from __future__ import annotations

import argparse
import asyncio
import selectors
import sys
import time
from pathlib import Path

import numpy as np
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/

from tests import faulty_server  # noqa: E402  (needs the path above)
from tests.faulty_server import FaultyServer, Script  # noqa: E402


class ServerTimingRecord:
    """What the server did, on its own perf_counter clock: request arrivals, token send lateness."""

    def __init__(self) -> None:
        self.arrivals_s: list[float] = []
        self.token_lateness_s: list[float] = []
        self.cpu_at_reset_s = time.process_time()
        self.wall_at_reset_s = time.perf_counter()

    def reset(self) -> None:
        self.__init__()

    def summary(self) -> dict:
        lateness_ms = np.asarray(self.token_lateness_s) * 1000.0
        quantiles = (
            {f"p{q:g}": float(np.percentile(lateness_ms, q)) for q in (50, 99, 99.9)} | {"max": float(lateness_ms.max())}
            if len(lateness_ms)
            else {}
        )
        return {
            "requests": len(self.arrivals_s),
            "tokens": len(lateness_ms),
            "arrivals_s": self.arrivals_s,
            "token_lateness_ms": quantiles,
            "cpu_s": time.process_time() - self.cpu_at_reset_s,
            "wall_s": time.perf_counter() - self.wall_at_reset_s,
        }


RECORD = ServerTimingRecord()
DEFAULT_SPIN_MS = 1.0


def precise_sleep_until(spin_s: float):
    """The faulty server's wait before each token, replaced: sleep on a timer until `spin_s`
    before the deadline, yield to the event loop for the rest (timer wake-ups on this VM come
    0.2-0.3 ms late, sometimes more), and record how late the wait ended."""

    async def sleep_until(deadline: float) -> None:
        remaining = deadline - time.perf_counter()
        if remaining > spin_s:
            await asyncio.sleep(remaining - spin_s)
        while time.perf_counter() < deadline:
            await asyncio.sleep(0)
        RECORD.token_lateness_s.append(time.perf_counter() - deadline)

    return sleep_until


class BenchScriptedServer(FaultyServer):
    """The faulty server plus arrival stamps and the /bench routes."""

    async def _serve(self, request: web.Request, api: str) -> web.StreamResponse:
        RECORD.arrivals_s.append(time.perf_counter())
        return await super()._serve(request, api)

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/bench/stats", self._stats)
        app.router.add_post("/bench/reset", self._reset)
        return app

    async def _stats(self, request: web.Request) -> web.Response:
        """The record since the last reset, with the number of distinct client connections used."""
        return web.json_response(RECORD.summary() | {"connections": len(set(self.client_ports))})

    async def _reset(self, request: web.Request) -> web.Response:
        RECORD.reset()
        self.client_ports.clear()
        return web.json_response({"reset": True})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--ttft-ms", type=float, required=True, help="first token this many ms after the request")
    parser.add_argument("--itl-ms", type=float, required=True, help="then one token every this many ms")
    parser.add_argument("--tokens", type=int, default=16, help="output tokens when a request gives no max_tokens")
    parser.add_argument(
        "--spin-ms", type=float, default=DEFAULT_SPIN_MS,
        help="yield instead of sleeping for this long before each token (0: timers only, as the faulty server does)",
    )
    args = parser.parse_args(argv)
    faulty_server._sleep_until = precise_sleep_until(args.spin_ms / 1000.0)
    script = Script(ttft_ms=args.ttft_ms, itl_ms=args.itl_ms, tokens=args.tokens, finish_in_last_chunk=True)

    async def serve() -> None:
        server = BenchScriptedServer(script, args.port)
        await server.start()
        print(f"scripted server listening on {server.base_url}", flush=True)
        await asyncio.Event().wait()

    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        loop.run_until_complete(serve())
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()


if __name__ == "__main__":
    main()
