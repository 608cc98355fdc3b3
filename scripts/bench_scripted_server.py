"""The benchmark's scripted truth: tests/support/faulty_server.py's server, run so that its timing is exact
to well under a millisecond, and able to say how exact it was.

Run as its own process (the benchmark pins it to its own core with `taskset`):
`python scripts/bench_scripted_server.py --port P --ttft-ms X --itl-ms Y --tokens N`.
Every request gets its first token X ms after it arrived, then one token every Y ms on an absolute
schedule (the faulty server's `Script`), one token per chunk, the finish reason on the last token
chunk (as vLLM streams), usage in a final chunk when asked.

Three things are added to the faulty server, without changing its code:
- **Arrival stamps.** A request's script (first token X ms after it arrived) counts from the moment
  its bytes were read off the socket, not from when aiohttp had parsed it and started its handler
  (0.2-0.3 ms later here, more when the server is busy).
- **Timer precision.** asyncio's default selector (epoll) sleeps in whole milliseconds, rounded up,
  so a token scripted at t would leave anywhere in [t, t + 1 ms), and on this VM a timer wake-up
  comes a further 0.2-0.3 ms late. This process runs the server on a `select(2)` event loop
  (microsecond timeouts) and waits the last `--spin-ms` (default 1 ms) before each token by
  yielding to the loop instead of sleeping. select() takes file descriptors below 1024 only,
  which bounds the number of open connections; the benchmark stays far below it. (Polling without
  ever sleeping, as `replay --busy-poll` does, made things worse here: with both of the VM's
  cores at 100%, the kernel's own work preempted one of the two processes for milliseconds.)
- **Self-measurement.** Each token's send is stamped against its scripted moment (`lateness`) and
  again when its write returned; each request's arrival and the process's CPU time are kept.
  `GET /bench/stats` answers them as JSON (`?per_request=1`: every request's arrival and token
  write moments, in wall-clock seconds); `POST /bench/reset` clears them. The benchmark uses them
  to say how true the server's own timing was, to define its capacity (CPU seconds per request),
  to see every tool's send schedule on one clock, and to split a client's timing error into the
  server's part and the client's own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import gc
import selectors
import sys
import time
from pathlib import Path

import numpy as np
from aiohttp import web, web_protocol, web_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/

from shadowreplay.replay.clock import ClockMapping  # noqa: E402
from tests.support import faulty_server  # noqa: E402  (needs the path above)
from tests.support.faulty_server import FaultyServer, Script  # noqa: E402


class ServerTimingRecord:
    """What the server did, on its own perf_counter clock: request arrivals, token send lateness,
    and per request the moment each token chunk had been handed to the kernel (`token_writes_s`)."""

    def __init__(self) -> None:
        self.arrivals_s: list[float] = []
        self.token_lateness_s: list[float] = []
        self.token_writes_s: list[list[float]] = []
        self.cpu_at_reset_s = time.process_time()
        self.wall_at_reset_s = time.perf_counter()

    def reset(self) -> None:
        ServerTimingRecord.__init__(self)

    def per_request(self) -> dict:
        """Every request's arrival and token write moments, in wall-clock seconds (this process's
        perf_counter mapped by its measured wall - perf offset), for matching with a client's rows."""
        offset = ClockMapping.measure_wall_minus_perf()
        return {
            "arrivals_wall_s": [a + offset for a in self.arrivals_s],
            "token_writes_wall_s": [[w + offset for w in writes] for writes in self.token_writes_s],
        }

    def summary(self) -> dict:
        lateness_ms = np.asarray(self.token_lateness_s) * 1000.0
        quantiles = (
            {f"p{q:g}": float(np.percentile(lateness_ms, q)) for q in (50, 99, 99.9)}
            | {"max": float(lateness_ms.max())}
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
CURRENT_WRITES: contextvars.ContextVar[list[float]] = contextvars.ContextVar("current_writes")


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


def stamped_chunk(chunk):
    """The faulty server's chunk writer, plus: when the chunk carries output text (not a role-only,
    finish-only or usage chunk), the moment the write returned (the bytes are with the kernel) goes
    into the request's record."""

    async def write_and_stamp(self, choices: list[dict], *args, **kwargs) -> None:
        await chunk(self, choices, *args, **kwargs)
        if any(_output_text(choice) for choice in choices):
            CURRENT_WRITES.get().append(time.perf_counter())

    return write_and_stamp


def _output_text(choice: dict) -> str:
    delta = choice.get("delta") or {}
    return choice.get("text") or delta.get("content") or delta.get("reasoning_content") or ""


class StampingRequestHandler(web_protocol.RequestHandler):
    """aiohttp's server protocol, plus the perf_counter moment of the latest non-empty read."""

    last_read_at: float | None = None

    def data_received(self, data: bytes) -> None:
        if data:
            self.last_read_at = time.perf_counter()
        super().data_received(data)


class BenchScriptedServer(FaultyServer):
    """The faulty server plus arrival stamps and the /bench routes. A request's script starts when
    its bytes were read off the socket (`StampingRequestHandler`), not when its handler got to run:
    the time aiohttp takes to parse and dispatch it is the server's, not the client's."""

    def _arrival(self, request: web.Request) -> float:
        """The read's stamp, recorded with a fresh list for the request's token writes."""
        stamped = getattr(request.protocol, "last_read_at", None)
        arrived = stamped if stamped is not None else time.perf_counter()
        RECORD.arrivals_s.append(arrived)
        writes: list[float] = []
        RECORD.token_writes_s.append(writes)
        CURRENT_WRITES.set(writes)  # called in the handler's own task, so in its own context
        return arrived

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/bench/stats", self._stats)
        app.router.add_post("/bench/reset", self._reset)
        return app

    async def _stats(self, request: web.Request) -> web.Response:
        """The record since the last reset, with the number of distinct client connections used;
        with `?per_request=1` also every request's arrival and token write moments."""
        answer = RECORD.summary() | {"connections": len(set(self.client_ports))}
        if request.query.get("per_request"):
            answer |= RECORD.per_request()
        return web.json_response(answer)

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
        "--spin-ms",
        type=float,
        default=DEFAULT_SPIN_MS,
        help="yield instead of sleeping for this long before each token (0: timers only, as the faulty server does)",
    )
    args = parser.parse_args(argv)
    faulty_server._sleep_until = precise_sleep_until(args.spin_ms / 1000.0)
    # wrapping the faulty server's chunk writer in place is the point (its code stays as it is)
    faulty_server._Stream.chunk = stamped_chunk(faulty_server._Stream.chunk)  # type: ignore[method-assign]
    # what aiohttp's Server builds per connection; replacing aiohttp's class is the point
    web_server.RequestHandler = StampingRequestHandler  # type: ignore[misc]
    script = Script(ttft_ms=args.ttft_ms, itl_ms=args.itl_ms, tokens=args.tokens, finish_in_last_chunk=True)

    async def serve() -> None:
        server = BenchScriptedServer(script, args.port)
        await server.start()
        gc.collect()
        gc.freeze()  # no full collection walks the imported modules while the server runs
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
