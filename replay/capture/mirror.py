"""`capture --mirror C.yaml`: a live shadow. Each request the capture keeps is also sent to the candidate
target, from the proxy's event loop but never in production's way, and the candidate's result rows go
to `LOG_DIR/mirror/`, a run directory in the results schema (replay/schemas/run_dir.py RunDir), so
`shadowreplay gate LOG_DIR/mirror --baseline production --candidate NAME` judges the live shadow as
it judges a replayed one.

When a request arrives it is queued for the mirror (`submit`: a put that never waits); `MIRROR_SLOTS`
tasks take requests from the queue and send them with the replay's own parts: the request builder
(replay/requests/builder.py: the body as production's client sent it, `model` the candidate's,
output lengths natural) and the streaming client (replay/clients/stream_client.py: TTFT, tokens,
usage, the answer, timeouts from the target file), each outcome into the same result row a replay
writes (replay/run/result_rows.py). The candidate gets the request when production does (its
`scheduled_s` is the request's arrival on the capture's timeline, seconds since the capture started),
as the client sent it (what a shadow is for: the candidate sees production's real traffic); what
the mirror writes is redacted first by the capture's rules (`output_text`, `error`).

Load shedding: a candidate that is slow or down holds at most `MIRROR_SLOTS` requests; then the
queue fills (`max_queued`), and a request that finds it full is dropped and counted (`dropped`,
never a wait), production's response is never held. At the end the mirror waits for its requests in
flight up to the drain time; what is still queued or in flight then gets a `cancelled` final row,
so every request handed to the mirror has exactly one final row. The facts `gate --baseline
production` judges against (production's answer, status and timings, from the captured rows) are
written by the recorder, one file a rotation once it is merged: `RUN_DIR/requests/<rotation>.parquet`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from shadowreplay.replay.capture.exchange import CapturedExchange
from shadowreplay.replay.capture.redaction import Redactor
from shadowreplay.replay.clients.read_stamps import StampingConnector
from shadowreplay.replay.clients.stream_client import StreamingClient
from shadowreplay.replay.clock import ClockMapping
from shadowreplay.replay.requests.builder import RequestBuilder
from shadowreplay.replay.run.result_rows import result_row
from shadowreplay.replay.schemas.manifest import Manifest
from shadowreplay.replay.schemas.results import StreamOutcome
from shadowreplay.replay.schemas.run_dir import RunDir
from shadowreplay.replay.schemas.shards import ShardWriter
from shadowreplay.replay.secrets import Scrubber
from shadowreplay.replay.targets.config import TargetConfig

MIRROR_SLOTS = 64  # requests in flight to the candidate, at most
MAX_QUEUED = 1000  # requests waiting for a slot, at most; beyond: dropped, counted
WORKER = "mirror"


@dataclass
class MirrorCounts:
    """What the mirror did: requests handed to it, sent, dropped (queue full), final rows by status."""

    submitted: int = 0
    sent: int = 0
    dropped: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


class CaptureMirror:
    """Sends kept requests to `target` and records its results in `run_dir` (module docstring). Every
    method runs on the proxy's event loop; `start` before the first `submit`, `close` at the end."""

    def __init__(
        self,
        target: TargetConfig,
        run_dir: Path,
        redactor: Redactor | None = None,
        max_queued: int = MAX_QUEUED,
        slots: int = MIRROR_SLOTS,
        epoch: float | None = None,
        log_dir: Path | None = None,
    ):
        self.target = target
        self.run_dir = RunDir(run_dir)
        self.redactor = redactor
        self.slots = slots
        self.counts = MirrorCounts()
        self.run_id = uuid.uuid4().hex[:12]
        self.builder = RequestBuilder(target)
        self.clock = ClockMapping(ClockMapping.measure_wall_minus_perf(), epoch if epoch is not None else time.time())
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=max_queued)
        self._writer: ShardWriter | None = None
        self._session: aiohttp.ClientSession | None = None
        self._client: StreamingClient | None = None
        self._tasks: list[asyncio.Task] = []
        self._in_flight: dict[str, dict[str, Any]] = {}
        self._stopping = False
        self._scrubber = Scrubber([target.api_key()])
        self.manifest = Manifest(
            run_id=self.run_id,
            status="running",
            started_at=time.time(),
            epoch=self.clock.epoch,
            traffic_log=str(log_dir) if log_dir is not None else None,
            targets=[target.public_dict()],
            load_generator={"tool": "shadowreplay capture --mirror", "slots": slots, "max_queued": max_queued},
        )

    async def start(self) -> None:
        self.builder.prepare()
        self.run_dir.results_dir.mkdir(parents=True, exist_ok=True)
        self._writer = self.run_dir.result_writer(WORKER, background=True)
        self._session = aiohttp.ClientSession(connector=StampingConnector(limit=0, ttl_dns_cache=300))
        counter = self.builder.count_tokens if self.target.tokenizer else None
        self._client = StreamingClient(self._session, self.target, token_counter=counter, keep_output_text=True)
        self._tasks = [asyncio.create_task(self._send_forever()) for _ in range(self.slots)]
        self._tasks.append(asyncio.create_task(self._flush_forever()))
        self.run_dir.write_manifest(self.manifest, self._scrubber)

    def submit(self, exchange: CapturedExchange) -> None:
        """Queue the request of `exchange` for the candidate (never waits: a full queue drops it, counted)."""
        self.counts.submitted += 1
        row = {
            **exchange.request_fields(),
            "scheduled_s": exchange.arrival_us / 1e6 - self.clock.epoch,
            "expected_prompt_tokens": None,
            "expected_completion_tokens": None,  # natural: the candidate ends its own answer
            "completion_cap": None,
            "clamped": False,
            "raised": False,
        }
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self.counts.dropped += 1

    async def close(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the queue and the requests in flight; what is left gets a `cancelled`
        row; every row committed."""
        deadline = time.monotonic() + timeout_s
        while (self._queue.qsize() or self._in_flight) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._stopping = True
        for task in self._tasks:
            task.cancel("capture stopped")  # a send in flight ends `cancelled` ("capture stopped while in flight")
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while not self._queue.empty():
            self._record(
                self._queue.get_nowait(), StreamOutcome(status="cancelled", error="capture stopped before send")
            )
        if self._session is not None:
            await self._session.close()
        if self._writer is not None:
            self._writer.close()
        self.manifest.status = "completed"
        self.manifest.ended_at = time.time()
        self.manifest.wall_s = self.manifest.ended_at - (self.manifest.started_at or self.manifest.ended_at)
        self.manifest.load_generator = (self.manifest.load_generator or {}) | {"counts": self.json_counts()}
        self.run_dir.write_manifest(self.manifest, self._scrubber)

    def json_counts(self) -> dict[str, Any]:
        counts = self.counts
        return {"submitted": counts.submitted, "sent": counts.sent, "dropped": counts.dropped} | {
            "by_status": dict(counts.by_status)
        }

    async def _send_forever(self) -> None:
        assert self._client is not None
        while True:
            row = await self._queue.get()
            key = row["request_id"]
            self._in_flight[key] = row
            try:
                try:
                    built = self.builder.build(row)
                except Exception as exc:  # a request the candidate cannot take: its own row
                    self._record(row, StreamOutcome(status="http_error", error=f"request not built: {exc}"))
                    continue
                row = built.recorded_row(row)
                self.counts.sent += 1
                outcome = await self._client.send(built.body)  # a cancel ends it as a `cancelled` outcome
                self._record(row, outcome)
            finally:
                self._in_flight.pop(key, None)
            if self._stopping:
                return

    def _record(self, row: dict[str, Any], outcome: StreamOutcome) -> None:
        if self.redactor is not None:
            outcome.output_text = self.redactor.text(outcome.output_text)
            outcome.error = self.redactor.text(outcome.error)
        result = result_row(
            run_id=self.run_id,
            target=self.target.name,
            worker=WORKER,
            row=row,
            outcome=outcome,
            attempt=1,
            final=True,
            to_run_s=self.clock.to_run_s,
            keep_output_text=True,
        )
        assert self._writer is not None
        self._writer.add(result)
        self.counts.by_status[outcome.status] = self.counts.by_status.get(outcome.status, 0) + 1

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            assert self._writer is not None
            self._writer.flush_if_due()  # background writer: hands the rows to its thread
