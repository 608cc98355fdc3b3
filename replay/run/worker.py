"""One replay worker: its own event loop (uvloop where available) and HTTP sessions, sending its
share of the plan at the scheduled moments of one shared timeline and writing one result row per
request, target and attempt.

Clocks: every timing is taken with time.perf_counter() and mapped onto the run's timeline with one
offset measured when the worker starts (`shadowreplay.replay.clock.ClockMapping`), so all workers of a
run, on any host whose wall clock is synchronised, share the same `*_s` axis: seconds since the
run's start epoch.
This module has no Ray in it; replay/run/runner.py wraps it in a Ray actor.

Surviving (the runner's side is in replay/run/runner.py):
- Results are committed every `flush_rows` rows or `flush_age_s` seconds (1000 rows, 2 s), so a
  worker process that dies loses at most that batch and what is in flight; the runner gives those
  requests `worker_lost` rows and hands the worker's unsent rows to a replacement.
- The worker watches its driver (`DriverLink`, replay/run/driver_link.py): when the driver's
  process is gone, the worker stops sending at once (within `DRIVER_LOST_STOP_S`), ends what is in
  flight as `cancelled` ("the driver was lost") and commits its rows, so a `--resume` replays them.
- A plan row may carry `only_targets` (a resume segment's rows missing for some targets only):
  it is sent to those targets alone.

Keeping the loop free (a late wake-up shows as send lateness and as late token stamps):
- A send is waited for by sleeping until `SPIN_BEFORE_SEND_S` before it, then yielding to the loop
  until the moment comes (uvloop's timers have millisecond resolution, and a wake-up on a busy
  host comes up to about a millisecond late).
- Token arrivals are stamped when the connection reads them (`shadowreplay.replay.clients.read_stamps`), not when the
  request's reader gets its turn.
- `busy_poll` (opt-in; `replay --busy-poll`): the loop never sleeps in the kernel for the whole run,
  as it does anyway in the last `SPIN_BEFORE_SEND_S` before a send. A sleeping CPU, above all a
  virtual one, wakes up late when a read arrives: on the 2-core VM this was measured on, at half
  the scripted server's capacity, our ITL error against the server's real send times had a p99
  of 1.1-1.6 ms with the loop sleeping between events and 0.4-0.5 ms with it polling, in the
  quieter rounds of scripts/bench_loadgen.py. The price is one core per worker at 100%, taken from
  anything else on the node (a local server included).
- Result shards are encoded and written by the result writer's own thread (background mode), and
  the writer is warmed up before the run (pyarrow's first Parquet write in a process costs several
  times a later one).
- The plan arrives in pieces (`PlanPieces`, replay/run/plan_pieces.py): read from the worker's plan
  shard on a thread of its own, ahead of the sends, and turned into dicts a few rows at a time (a
  conversion never stalls the loop for long).
- While a run lasts, the garbage collector leaves the objects made before it alone (`gc.freeze`:
  a full collection over the imported modules and tokenizers takes tens of milliseconds), and the
  GIL switch interval is `GIL_SWITCH_INTERVAL_S` (the default 5 ms would let the writer thread
  keep the loop waiting that long).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pyarrow as pa

from shadowreplay.replay.clients.rate_limiter import RateLimiter, estimated_tokens
from shadowreplay.replay.clients.read_stamps import StampingConnector
from shadowreplay.replay.clients.replicas import Replicas
from shadowreplay.replay.clients.retry_policy import BUDGET_EXHAUSTED, RetryBudget
from shadowreplay.replay.clients.stream_client import ERROR_TEXT_LIMIT, StreamingClient
from shadowreplay.replay.clock import ClockMapping
from shadowreplay.replay.requests.builder import RequestBuilder
from shadowreplay.replay.run.driver_link import DriverLink
from shadowreplay.replay.run.plan_pieces import PlanPieces
from shadowreplay.replay.run.result_rows import result_row
from shadowreplay.replay.run.running_sketch import RunningSketch
from shadowreplay.replay.schemas.results import StreamOutcome
from shadowreplay.replay.schemas.run_dir import RunDir
from shadowreplay.replay.secrets import Scrubber
from shadowreplay.replay.targets.config import TargetConfig

_new_event_loop: Callable[[], asyncio.AbstractEventLoop]
try:  # uvloop is optional (not on Windows); plain asyncio works the same, a little slower.
    from uvloop import new_event_loop as _new_event_loop
except ImportError:  # pragma: no cover - depends on the platform
    _new_event_loop = asyncio.new_event_loop

SPIN_BEFORE_SEND_S = 0.002  # the last 2 ms before a send are waited by yielding, not sleeping
WARM_UP_ROWS = 8  # plan rows whose sample result rows warm the result writer up before a run
GIL_SWITCH_INTERVAL_S = 0.0005  # while a run lasts (sys.setswitchinterval)


@dataclass(frozen=True)
class WorkerSettings:
    run_id: str
    worker: str
    run_dir: str  # the RunDir's path (a string: the settings travel to Ray actors)
    keep_output_text: bool = False
    block_size: int = 512
    flush_rows: int = 1000
    flush_age_s: float = 2.0  # results older than this are committed: what a lost worker can lose
    concurrency: int | None = None  # closed loop with this many users; None: open loop at scheduled_s
    duration_s: float | None = None  # closed loop: stop taking rows after this many seconds
    worker_count: int = 1  # workers in the run: each enforces this share of a target's rate limits and retry budget
    busy_poll: bool = False  # keep the event loop polling for the whole run (a full core): see the module docstring
    cpus: tuple[int, ...] | None = None  # the CPUs this worker runs on (replay/run/cpu_placement.py); None: any
    segment: int = 0  # the run's start this worker belongs to: 0, or the k-th --resume
    driver: tuple[str, int] | None = None  # the driver's DriverLink address: stop when the driver is gone
    pairs: int | None = (
        None  # (request, target) pairs in its share, where rows carry only_targets; None: rows x targets
    )


async def _poll_forever() -> None:
    """Always one callback ready: the loop polls its sockets without a timeout and never sleeps."""
    while True:
        await asyncio.sleep(0)


def _forget(last_of_session: dict, key: tuple[str, str], task: asyncio.Task) -> None:
    """Drop a session's entry once its last request is done (nothing left to wait for)."""
    if last_of_session.get(key) is task:
        del last_of_session[key]


class ReplayWorker:
    """Sends one shard of a plan to every target and records the outcomes. `shard`: its plan shard
    file (what the runner gives, read in pieces) or the rows themselves."""

    def __init__(self, settings: WorkerSettings, targets: list[TargetConfig], shard: pa.Table | str | Path):
        self.settings = settings
        self.targets = targets
        self.plan = PlanPieces(shard)
        self.builders = {t.name: RequestBuilder(t, block_size=settings.block_size) for t in targets}
        for builder in self.builders.values():
            builder.prepare()  # load tokenizers now, not on the first send (it would show as lateness)
        self.sketch = RunningSketch(scheduled=settings.pairs or self.plan.num_rows * len(targets))
        self.scrubber = Scrubber([t.api_key() for t in targets])
        share = 1.0 / max(1, settings.worker_count)
        self.limiters = {t.name: RateLimiter(t.rate_limits, share) for t in targets}
        self.retry_budgets = {t.name: RetryBudget(t.retry.budget, share) for t in targets}
        self.wall_minus_perf = ClockMapping.measure_wall_minus_perf()
        self._cancel = threading.Event()
        self._cancel_reason = "run cancelled"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._driver = DriverLink.watch(settings.driver, self._driver_lost) if settings.driver else None
        self._writer = RunDir(settings.run_dir).result_writer(
            settings.worker, max_rows=settings.flush_rows, max_age_s=settings.flush_age_s, background=True
        )
        self.plan.start()  # its first pieces are read while the other workers get ready

    # -- called from other threads (the Ray actor's control methods) --------------------------
    def cancel(self, reason: str = "run cancelled") -> None:
        """Stop sending; requests in flight end as `cancelled`, unsent ones get `cancelled` rows."""
        if not self._cancel.is_set():
            self._cancel_reason = reason
        self._cancel.set()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: None)  # wake the dispatcher

    def progress(self):
        return self.sketch.snapshot()

    def _driver_lost(self) -> None:
        self.cancel("the driver was lost")

    # -- the run ------------------------------------------------------------------------------
    def run(self, epoch: float) -> dict:
        """Run the shard on a fresh event loop in this thread; returns counts of rows by status."""
        clock = ClockMapping(self.wall_minus_perf, epoch)
        loop = _new_event_loop()
        self._loop = loop
        self._warm_up_writer(clock)
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        gc.collect()
        gc.freeze()  # what exists now lives as long as the run: no collection needs to walk it again
        try:
            return loop.run_until_complete(self._run(clock))
        finally:
            gc.unfreeze()
            sys.setswitchinterval(switch_interval)
            self.plan.close()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            if self._driver is not None:
                self._driver.close()

    def _warm_up_writer(self, clock: ClockMapping) -> None:
        """Encode a few result rows shaped like the run's (in memory, nothing written) before the
        run starts, so that its first shard does not pay pyarrow's first-use costs mid-run."""
        plan_rows = self.plan.head(WARM_UP_ROWS)
        token_times = [0.001 * (i + 1) for i in range(16)]
        outcome = StreamOutcome(
            sent=0.0,
            first_token=token_times[0],
            last_token=token_times[-1],
            done=token_times[-1],
            token_times=token_times,
            prompt_tokens=1,
            completion_tokens=16,
            client_tokens=16,
            finish_reason="length",
            http_status=200,
        )
        sample = [
            result_row(
                run_id=self.settings.run_id,
                target=target.name,
                worker=self.settings.worker,
                row=row,
                outcome=outcome,
                attempt=1,
                final=True,
                to_run_s=clock.to_run_s,
                keep_output_text=self.settings.keep_output_text,
                segment=self.settings.segment,
            )
            for row in plan_rows
            for target in self.targets
        ]
        if sample:
            self._writer.warm_up(sample)

    async def _run(self, clock: ClockMapping) -> dict:
        connector_kwargs = dict(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        sessions = {
            t.name: aiohttp.ClientSession(connector=StampingConnector(**connector_kwargs)) for t in self.targets
        }
        clients = {
            t.name: Replicas(
                [
                    StreamingClient(
                        sessions[t.name],
                        t.model_copy(update={"base_url": url}),
                        token_counter=self.builders[t.name].count_tokens if t.tokenizer else None,
                        keep_output_text=self.settings.keep_output_text,
                    )
                    for url in t.replica_urls
                ]
            )
            for t in self.targets
        }
        flusher = asyncio.create_task(self._flush_periodically())
        poller = asyncio.create_task(_poll_forever()) if self.settings.busy_poll else None
        try:
            if self.settings.concurrency:
                await self._dispatch_closed_loop(clients, clock)
            else:
                await self._dispatch_open_loop(clients, clock)
        finally:
            background = [task for task in (flusher, poller) if task is not None]
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            for session in sessions.values():
                await session.close()
            self._writer.close()
        return dict(self.sketch.by_status)

    async def _dispatch_open_loop(self, clients: dict, clock: ClockMapping) -> None:
        """Send each row at its scheduled moment, whatever is still in flight (open loop)."""
        in_flight: set[asyncio.Task] = set()  # only unfinished tasks are held: memory stays bounded
        last_of_session: dict[tuple[str, str], asyncio.Task] = {}
        rows = self.plan.rows()
        for row in rows:
            if not await self._wait_until(clock.to_perf(row["scheduled_s"])):
                self._record_unsent(row, clock)
                break
            for target in self._targets_of(row):
                key = (target.name, row["session_id"]) if row["session_id"] is not None else None
                predecessor = last_of_session.get(key) if key else None
                task = asyncio.create_task(self._one(clients[target.name], target, row, clock, predecessor))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                if key:
                    last_of_session[key] = task
                    task.add_done_callback(functools.partial(_forget, last_of_session, key))
        await self._settle(in_flight)
        # Rows never sent (cancelled before their time) still get their one final row.
        for row in rows:
            self._record_unsent(row, clock)

    async def _dispatch_closed_loop(self, clients: dict, clock: ClockMapping) -> None:
        """`concurrency` users, each taking the next row as soon as its previous request is done
        (closed loop), until the rows run out or `duration_s` has passed. A row is scheduled when a
        user takes it: `scheduled_s` is that moment, so lateness measures only our own dispatch.
        Rows no user took were never scheduled and get no result row."""
        concurrency = self.settings.concurrency
        assert concurrency, "closed loop without a concurrency"
        rows = self.plan.rows()
        end = clock.to_perf(self.settings.duration_s) if self.settings.duration_s else None

        async def user() -> None:
            for row in rows:
                if self._cancel.is_set() or (end is not None and time.perf_counter() >= end):
                    return
                row = {**row, "scheduled_s": clock.to_run_s(time.perf_counter())}
                await asyncio.gather(*(self._one(clients[t.name], t, row, clock, None) for t in self.targets))

        if not await self._wait_until(clock.to_perf(0.0)):
            return
        users = {asyncio.create_task(user()) for _ in range(concurrency)}
        await self._settle(users)

    async def _settle(self, tasks: set[asyncio.Task]) -> None:
        """Wait for `tasks`; a cancel (now or later) cancels what is left."""
        while tasks:
            if self._cancel.is_set():
                for task in tasks:
                    task.cancel(self._cancel_reason)
            done, _ = await asyncio.wait(set(tasks), timeout=0.2)
            tasks -= done

    def _targets_of(self, row: dict) -> list[TargetConfig]:
        """The targets `row` goes to: all, or a resumed row's `only_targets`."""
        only = row.get("only_targets")
        return self.targets if only is None else [t for t in self.targets if t.name in only]

    def _record_unsent(self, row: dict, clock: ClockMapping) -> None:
        error = f"{self._cancel_reason} before send"
        for target in self._targets_of(row):
            self._record(row, target, StreamOutcome(status="cancelled", error=error), clock, 1)

    async def _wait_until(self, perf_deadline: float) -> bool:
        """Sleep until the deadline (the last millisecond by yielding); False if cancelled meanwhile."""
        while True:
            if self._cancel.is_set():
                return False
            remaining = perf_deadline - time.perf_counter()
            if remaining <= 0:
                return True
            if remaining > SPIN_BEFORE_SEND_S:
                await asyncio.sleep(min(remaining - SPIN_BEFORE_SEND_S, 0.1))
            else:
                await asyncio.sleep(0)

    async def _one(self, replicas: Replicas, target: TargetConfig, row: dict, clock: ClockMapping, predecessor) -> None:
        """Send one row to one target (each attempt to one of its replicas), with retries; exactly one
        final row whatever happens."""
        attempt = 1
        replica: int | None = None  # the replica of the attempt before: a retry goes to another
        try:
            if predecessor is not None:
                await asyncio.wait([predecessor])  # a session's requests replay in order
            try:
                built = self.builders[target.name].build(row)
            except Exception as exc:  # a row the target cannot take: its own row, never a crash
                error = self.scrubber.cut(f"request not built: {exc}", ERROR_TEXT_LIMIT)
                self._record(row, target, StreamOutcome(status="http_error", error=error), clock, 1)
                return
            row = built.recorded_row(row)
            limiter, budget = self.limiters[target.name], self.retry_budgets[target.name]
            tokens = estimated_tokens(row["expected_prompt_tokens"], row["expected_completion_tokens"])
            self.sketch.on_sent()
            budget.on_request()
            while True:
                await limiter.acquire(tokens)  # client-side rate limits: `sent` is taken after the wait
                replica, outcome = await replicas.send(built.body, avoid=replica)
                delay = None if outcome.status == "cancelled" else target.retry.delay_before_retry(outcome, attempt)
                if delay is not None and not budget.allow_retry():
                    delay = None
                    outcome.error = f"{outcome.error} ({BUDGET_EXHAUSTED})"
                self._record(row, target, outcome, clock, attempt, final=delay is None, replica=replica)
                if delay is None:
                    return
                attempt += 1
                resume = time.perf_counter() + delay
                while (left := resume - time.perf_counter()) > 0:  # the event loop's timer may wake early
                    await asyncio.sleep(left)
        except asyncio.CancelledError:
            # Cancelled before sending (waiting for its session or the rate limiter) or while waiting to retry.
            self._record(
                row,
                target,
                StreamOutcome(status="cancelled", error=f"{self._cancel_reason} before this attempt"),
                clock,
                attempt,
            )

    def _record(
        self,
        row: dict,
        target: TargetConfig,
        outcome: StreamOutcome,
        clock: ClockMapping,
        attempt: int,
        final: bool = True,
        replica: int | None = None,
    ) -> None:
        result = result_row(
            run_id=self.settings.run_id,
            target=target.name,
            worker=self.settings.worker,
            row=row,
            outcome=outcome,
            attempt=attempt,
            final=final,
            to_run_s=clock.to_run_s,
            keep_output_text=self.settings.keep_output_text,
            replica=replica,
            segment=self.settings.segment,
        )
        self._writer.add(result)
        if attempt == 1:  # a retry's send is late by design
            self.sketch.on_first_send(result["lateness_ms"])
        if final:
            ttft = (outcome.first_token - outcome.sent) * 1000.0 if outcome.first_token and outcome.sent else None
            self.sketch.on_done(outcome.status, ttft)

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._writer.flush_if_due()
