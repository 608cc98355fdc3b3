"""The Ray runner: starts a local Ray instance (or joins a cluster), splits the plan across worker
actors, gives them one start epoch, shows live progress, and guarantees one final result row per
scheduled request and target, whatever happened to a worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from shadowreplay.replay.clock import ClockMapping
from shadowreplay.replay.run.cpu_placement import LOADGEN_NICE, ProcessPriority, descendant_processes, process_cpus
from shadowreplay.replay.run.plan import split_plan
from shadowreplay.replay.run.plan_pieces import PIECE_ROWS
from shadowreplay.replay.run.ray_notices import silence_ray_auth_notice
from shadowreplay.replay.run.running_sketch import ProgressSnapshot
from shadowreplay.replay.run.worker import ReplayWorker, WorkerSettings
from shadowreplay.replay.schemas.run_dir import RunDir
from shadowreplay.replay.targets.config import TargetConfig, TargetConfigError
from shadowreplay.replay.telemetry.gpu_node_samplers import GpuNodeSamplers

silence_ray_auth_notice()  # Ray's "token authentication is enabled" line on every local start (ray_notices.py)

START_LEAD_S = 1.0  # the shared epoch is this far after every worker reported ready
ACTOR_THREADS = 4  # max_concurrency of a worker actor
# How often the driver asks every worker for its progress. Each answer is a call into the worker's
# process, on the core it sends from: it takes the GIL from the event loop (about 0.1 ms here), so
# it is asked no more often than a person reads the display.
PROGRESS_INTERVAL_S = 1.0


class ReplayWorkerActor:
    """A ReplayWorker in its own process: `run` blocks one thread on the worker's event loop while
    `progress` and `cancel` answer from another. The Ray actor class is REPLAY_WORKER_ACTOR."""

    def __init__(self, settings: WorkerSettings, targets: list[TargetConfig], shard: str):
        # `shard`: the path of its plan shard in the run directory (replay/run/plan_pieces.py).
        # Priority and cores first, so that the tokenizers load on the worker's own cores.
        self.priority = ProcessPriority.raise_to(cpus=settings.cpus)
        self.worker = ReplayWorker(settings, targets, shard)

    def ready(self) -> dict:
        return {
            "worker": self.worker.settings.worker,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "wall_minus_perf": self.worker.wall_minus_perf,
            "requests": self.worker.plan.num_rows,
            **self.priority.model_dump(),
            "priority_warning": self.priority.warning(f"a replay worker on {socket.gethostname()}"),
        }

    def run(self, epoch: float) -> dict:
        return self.worker.run(epoch)

    def progress(self) -> ProgressSnapshot:
        return self.worker.progress()

    def cancel(self) -> None:
        self.worker.cancel()


# ray.remote's typed overloads take no actor options (max_concurrency): they are given where the actors start.
REPLAY_WORKER_ACTOR = ray.remote(ReplayWorkerActor)


@dataclass
class RunSettings:
    run_dir: Path
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6])
    workers: int | None = None  # None: one per CPU of the cluster
    address: str | None = None  # None: start a local Ray instance
    keep_output_text: bool = False
    block_size: int = 512
    concurrency: int | None = None  # closed loop with this many users in all; None: open loop
    duration_s: float | None = None  # closed loop: stop taking new requests after this long
    busy_poll: bool = False  # every worker's event loop polls without sleeping (a core each; see replay_worker)
    worker_cpus: list[int] | None = None  # pin every worker to these CPUs (Session.placement); None: not pinned


def worker_failure(exc: BaseException) -> str:
    """What to print of a worker's failure: the exception type, and the message only for a target
    configuration error (which names a file and a variable, never a secret). Other messages may
    hold request details, so they stay out of the console."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, TargetConfigError):
        return f"{type(exc).__name__}: {cause}"
    return type(exc).__name__


@dataclass
class RunOutcome:
    run_id: str
    by_status: dict[str, int]
    workers: list[dict]
    epoch: float
    wall_s: float
    cancelled: bool
    lost_rows: int  # rows the runner had to write for requests whose worker died
    telemetry: list = field(default_factory=list)  # each sampler's stats


def start_ray(address: str | None, cpus: Sequence[int] | None = None) -> dict:
    """Join `address` or start a small local instance (its own processes on `cpus` where given:
    replay/run/cpu_placement.py); returns facts for the manifest."""
    if not ray.is_initialized():
        # Joining a cluster: its own resources. Local: a small object store (plans and results
        # travel as Parquet shards, not objects), workers at the default priority, not Ray's
        # nice 15 (replay/run/cpu_placement.py), and no idle worker processes started ahead (Ray
        # starts one per CPU for tasks; replay workers are actors, each started on demand, and an
        # idle worker wakes about 100 times a second on the cores the replay workers send from);
        # None is ray.init's default for each. Ray's processes inherit the affinity of the thread that
        # starts them, so with `cpus` this thread holds them only while ray.init runs.
        before = descendant_processes()
        with _thread_affinity(None if address else cpus):
            _init_ray(address)
        # Where the processes this start left on this host run (their CPUs, as the kernel has them).
        started = {pid: name for pid, name in descendant_processes().items() if pid not in before}
        local_processes = process_cpus(started) if not address else None
    else:
        local_processes = None
    nodes = [
        {"host": n["NodeManagerHostname"], "address": n["NodeManagerAddress"], "resources": n["Resources"]}
        for n in ray.nodes()
        if n.get("Alive")
    ]
    facts = {"address": address or "local", "ray_version": ray.__version__, "nodes": nodes}
    return facts if local_processes is None else {**facts, "local_processes": local_processes}


@contextlib.contextmanager
def _thread_affinity(cpus: Sequence[int] | None) -> Iterator[None]:
    """The calling thread on `cpus` inside the block (None: unchanged); Linux keeps affinity per thread."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _init_ray(address: str | None) -> None:
    ray.init(
        address=address or None,
        num_cpus=None if address else os.cpu_count() or 1,
        object_store_memory=None if address else 512 * 1024 * 1024,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
        # transformers warns at import that torch is absent: true, and irrelevant to tokenizers.
        runtime_env={"env_vars": {"TRANSFORMERS_VERBOSITY": "error"}},
        _system_config=None if address else {"worker_niceness": LOADGEN_NICE, "prestart_worker_first_driver": False},
    )


def run_plan(
    plan: pa.Table,
    targets: list[TargetConfig],
    settings: RunSettings,
    on_progress: Callable[[ProgressSnapshot], None] | None = None,
    progress_interval_s: float = PROGRESS_INTERVAL_S,
    samplers: list | None = None,
    gpu_samplers: GpuNodeSamplers | None = None,
) -> RunOutcome:
    """Replay `plan` against `targets` on Ray workers; results land in settings.run_dir/results.
    `samplers` (telemetry: objects with start(clock) and stop() -> stats) run on this process
    from the shared epoch until the last worker is done. `gpu_samplers` (NVML actors, one on every
    GPU node of the cluster) are placed while the workers start, then sample over the same span on
    the same timeline; every sampler's stats end up in RunOutcome.telemetry."""
    run_dir = RunDir(settings.run_dir)
    run_dir.results_dir.mkdir(parents=True, exist_ok=True)
    # One worker per CPU of the cluster, or per CPU the placement gave the workers.
    cpus = len(settings.worker_cpus) if settings.worker_cpus else int(ray.cluster_resources().get("CPU", 1))
    n_workers = max(1, min(settings.workers or cpus, plan.num_rows, settings.concurrency or plan.num_rows))
    shards = split_plan(plan, n_workers)
    # Closed loop: the users are spread over the workers as evenly as they go.
    users: list[int | None] = [None] * n_workers
    if settings.concurrency:
        users = [settings.concurrency // n_workers + (i < settings.concurrency % n_workers) for i in range(n_workers)]
    actors: list[Any] = []  # actor handles
    for i, shard in enumerate(shards):
        worker_settings = WorkerSettings(
            run_id=settings.run_id,
            worker=f"w{i:03d}",
            run_dir=str(run_dir.path),
            keep_output_text=settings.keep_output_text,
            block_size=settings.block_size,
            concurrency=users[i],
            duration_s=settings.duration_s,
            worker_count=n_workers,
            busy_poll=settings.busy_poll,
            cpus=tuple(settings.worker_cpus) if settings.worker_cpus else None,
        )
        # Each worker reads its share from the run directory in pieces (replay/run/plan_pieces.py):
        # a plan of millions of rows never travels through the object store.
        shard_path = run_dir.write_plan_shard(worker_settings.worker, shard, PIECE_ROWS)
        actor = REPLAY_WORKER_ACTOR.options(num_cpus=0, max_concurrency=ACTOR_THREADS)
        actors.append(actor.remote(worker_settings, targets, str(shard_path)))
    if gpu_samplers is not None:
        gpu_samplers.place()  # their processes start beside the workers'
    by_status: dict[str, int] = {}
    cancelled = False
    try:
        workers = ray.get([a.ready.remote() for a in actors])
        for line in sorted({w["priority_warning"] for w in workers if w["priority_warning"]}):
            print(f"replay: WARNING: {line}", flush=True)
        if gpu_samplers is not None:
            gpu_samplers.wait_ready()  # so that they sample from before the epoch on
        epoch = time.time() + START_LEAD_S
        started = time.monotonic()
        clock = ClockMapping(ClockMapping.measure_wall_minus_perf(), epoch)
        for sampler in samplers or []:
            sampler.start(clock)
        if gpu_samplers is not None:
            gpu_samplers.start(epoch)  # each actor maps its own clock to this epoch
        run_refs = {a.run.remote(epoch): a for a in actors}
        pending = list(run_refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=len(pending), timeout=progress_interval_s)
                for ref in done:
                    try:
                        for status, count in ray.get(ref).items():
                            by_status[status] = by_status.get(status, 0) + count
                    except ray.exceptions.RayError as exc:  # a worker died: its missing rows are filled below
                        print(f"replay: worker {run_refs[ref]} failed: {worker_failure(exc)}", flush=True)
                if on_progress is not None:
                    on_progress(_progress_of(actors))
        except KeyboardInterrupt:
            cancelled = True
            ray.get([a.cancel.remote() for a in actors])
            for ref in pending:
                try:
                    for status, count in ray.get(ref).items():
                        by_status[status] = by_status.get(status, 0) + count
                except ray.exceptions.RayError:
                    pass
    finally:  # also when the workers never got ready: no sampler outlives the run
        telemetry = [sampler.stop() for sampler in samplers or []]
        if gpu_samplers is not None:
            telemetry += gpu_samplers.stop()
    # Open loop: every planned request was scheduled and must have its final row. Closed loop: only
    # the requests users took were scheduled, and each worker writes theirs.
    lost = 0 if settings.concurrency else fill_missing_rows(plan, targets, settings.run_id, run_dir)
    if lost:
        by_status["cancelled"] = by_status.get("cancelled", 0) + lost
    return RunOutcome(
        run_id=settings.run_id,
        by_status=by_status,
        workers=workers,
        epoch=epoch,
        wall_s=time.monotonic() - started,
        cancelled=cancelled,
        lost_rows=lost,
        telemetry=telemetry,
    )


def _progress_of(actors: list) -> ProgressSnapshot:
    """The sum of every live worker's progress (a dead worker's part is left out)."""
    snapshots = []
    for ref in [a.progress.remote() for a in actors]:
        try:
            snapshots.append(ray.get(ref, timeout=5))
        except (ray.exceptions.RayError, TimeoutError):
            continue
    return ProgressSnapshot.combine(snapshots)


def fill_missing_rows(plan: pa.Table, targets: list[TargetConfig], run_id: str, run_dir: RunDir) -> int:
    """Write a `cancelled` final row for every (request, target) that has none (a lost worker). The
    plan and the index stay in Arrow: only the missing rows become Python objects."""
    index = run_dir.final_rows()
    writer = run_dir.result_writer("runner")
    missing = 0
    kept = ["request_id", "scheduled_s", "expected_prompt_tokens", "expected_completion_tokens", "clamped", "raised"]
    columns = plan.select([*kept, "tag"])  # a plan is built from traffic-log rows: it has every one
    for target in targets:
        for row in columns.filter(index.without_final(columns.column("request_id"), target.name)).to_pylist():
            missing += 1
            writer.add(
                {
                    "run_id": run_id,
                    "target": target.name,
                    "attempt": 1,
                    "final": True,
                    "worker": None,
                    "status": "cancelled",
                    "error": "no outcome recorded: the worker was lost before it wrote this request",
                    "token_times_ms": [],
                    **row,
                }
            )
    writer.close()
    return missing
