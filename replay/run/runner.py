"""The Ray runner: starts a local Ray instance (or joins a cluster), splits the plan across worker
actors, gives them one start epoch, shows live progress, and guarantees one final result row per
scheduled request and target, whatever happened to a worker: a dead worker's requests in flight
become `worker_lost` rows and its unsent ones go to a replacement (`_Fleet`), Ctrl-C at any moment
leaves `cancelled` rows for what was not done, and the workers stop on their own when this driver
dies (replay/run/driver_link.py). The counts it returns are read from the rows on disk.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from shadowreplay.replay.clock import ClockMapping
from shadowreplay.replay.run.cpu_placement import LOADGEN_NICE, ProcessPriority, descendant_processes, process_cpus
from shadowreplay.replay.run.driver_link import DriverLink
from shadowreplay.replay.run.plan import split_plan
from shadowreplay.replay.run.plan_pieces import PIECE_ROWS
from shadowreplay.replay.run.ray_notices import silence_ray_auth_notice
from shadowreplay.replay.run.running_sketch import ProgressSnapshot
from shadowreplay.replay.run.worker import ReplayWorker, WorkerSettings
from shadowreplay.replay.schemas.run_dir import FinalRowIndex, ResultScan, RunDir
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
            "node": ray.get_runtime_context().get_node_id(),  # Ray's node: several may share a host
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

    def cancel(self, reason: str = "run cancelled") -> None:
        self.worker.cancel(reason)


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
    segment: int = 0  # 0: the run's first start; k: its k-th --resume (the plan: the pairs left, on a new epoch)


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
    by_status: dict[str, int]  # final rows by status, as the run directory holds them after the run
    workers: list[dict]
    epoch: float | None  # None: interrupted before the workers were ready
    wall_s: float
    cancelled: bool
    lost_rows: int  # `worker_lost` rows the runner wrote (requests in flight when their worker died)
    telemetry: list = field(default_factory=list)  # each sampler's stats
    lost_workers: list[dict] = field(
        default_factory=list
    )  # each: worker, lost_at_s, worker_lost, reassigned, replaced_by
    unsent_rows: int = 0  # `cancelled` rows the runner wrote (Ctrl-C before the workers recorded them)


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
    on_start: Callable[[float, list[dict]], None] | None = None,
) -> RunOutcome:
    """Replay `plan` against `targets` on Ray workers; results land in settings.run_dir/results.
    `samplers` (telemetry: objects with start(clock) and stop() -> stats) run on this process
    from the shared epoch until the last worker is done. `gpu_samplers` (NVML actors, one on every
    GPU node of the cluster) are placed while the workers start, then sample over the same span on
    the same timeline; every sampler's stats end up in RunOutcome.telemetry. `on_start(epoch,
    workers)` is called once the epoch is chosen, before the first send (to record them at once:
    a driver killed later still leaves them in the manifest).

    Whatever happens (a worker process dies, Ctrl-C during start-up or after a worker died), every
    (request, target) pair of an open-loop plan ends with exactly one final row: see `_Fleet`."""
    run_dir = RunDir(settings.run_dir)
    run_dir.results_dir.mkdir(parents=True, exist_ok=True)
    # One worker per CPU of the cluster, or per CPU the placement gave the workers.
    cpus = len(settings.worker_cpus) if settings.worker_cpus else int(ray.cluster_resources().get("CPU", 1))
    n_workers = max(1, min(settings.workers or cpus, plan.num_rows, settings.concurrency or plan.num_rows))
    fleet = _Fleet(plan, targets, settings, run_dir)
    started = time.monotonic()
    cancelled = False
    telemetry: list = []
    try:
        fleet.start(n_workers)
        if gpu_samplers is not None:
            gpu_samplers.place()  # their processes start beside the workers'
        workers = fleet.wait_ready()
        for line in sorted({w["priority_warning"] for w in workers if w["priority_warning"]}):
            print(f"replay: WARNING: {line}", flush=True)
        if gpu_samplers is not None:
            gpu_samplers.wait_ready()  # so that they sample from before the epoch on
        # The epoch puts the plan's first send START_LEAD_S from now: 0 on a first start, the
        # resumed rows' first scheduled_s on a resume (the segment takes up the log's timeline).
        first_s = float(pc.min(plan.column("scheduled_s")).as_py() or 0.0) if settings.segment else 0.0
        epoch = time.time() + START_LEAD_S - first_s
        started = time.monotonic()
        clock = ClockMapping(ClockMapping.measure_wall_minus_perf(), epoch)
        fleet.epoch = epoch
        if on_start is not None:
            on_start(epoch, workers)
        for sampler in samplers or []:
            sampler.start(clock)
        if gpu_samplers is not None:
            gpu_samplers.start(epoch)  # each actor maps its own clock to this epoch
        fleet.run(epoch)
        while fleet.running():
            fleet.wait(progress_interval_s)
            if on_progress is not None:
                on_progress(fleet.progress())
    except KeyboardInterrupt:
        cancelled = True
        fleet.cancel()
    finally:  # also when the workers never got ready: no sampler outlives the run
        try:
            telemetry = [sampler.stop() for sampler in samplers or []]
            if gpu_samplers is not None:
                telemetry += gpu_samplers.stop()
        finally:
            fleet.close()
    # Open loop: every planned request was scheduled and must have its final row. Closed loop: only
    # the requests users took were scheduled, and each worker writes theirs.
    unsent = 0
    if not settings.concurrency:
        status, error = ("cancelled", "run cancelled before send") if cancelled else ("worker_lost", LOST_UNKNOWN)
        unsent = fill_missing_rows(plan, targets, settings, run_dir, status, error)
    return RunOutcome(
        run_id=settings.run_id,
        by_status=run_dir.scan_results().by_status(),  # the truth is the rows on disk
        workers=fleet.ready_facts,
        epoch=fleet.epoch,
        wall_s=time.monotonic() - started,
        cancelled=cancelled,
        lost_rows=fleet.lost_rows + (0 if cancelled else unsent),
        telemetry=telemetry,
        lost_workers=fleet.lost_workers,
        unsent_rows=unsent if cancelled else 0,
    )


LOST_IN_FLIGHT = "worker lost: the request was in flight, or its result not yet committed, when its worker process died"
LOST_UNKNOWN = "worker lost: no outcome recorded for this request"
LOST_NOT_REPLACED = "worker lost: its worker process died and no replacement could take the request"
MAX_REPLACEMENTS = 3  # per worker share: a share whose workers keep dying is given up as worker_lost
CANCEL_WAIT_S = 30.0  # after Ctrl-C, how long the workers get to record what was in flight


@dataclass
class _Slot:
    """One worker actor and its share of the plan."""

    name: str
    shard_path: Path
    actor: Any
    generation: int = 0  # 0: a first worker; k: the k-th replacement of its share
    node: str | None = None  # the Ray node it was placed on
    pairs: int | None = None  # (request, target) pairs of its share
    lost: bool = False  # its process died: its part of the progress is settled from the rows on disk
    run_ref: Any = None
    facts: dict | None = None


class _Fleet:
    """The run's worker actors: started, made ready, run on one epoch, replaced when one dies,
    cancelled on Ctrl-C (a second Ctrl-C stops at once).

    A worker that dies (its process killed, its node lost): the requests of its share without a final
    row on disk and scheduled before the loss was noticed were in flight, or done but not committed
    (at most one flush batch: WorkerSettings.flush_rows / flush_age_s); they get `worker_lost` rows,
    counted. The rest were never sent: a replacement worker takes them, at their scheduled times
    where still possible, else at once, which their `lateness_ms` shows. Workers are spread over the
    live nodes with CPUs one by one (each to the node holding fewest of the run's live workers), so
    a replacement lands on a node that is still alive."""

    def __init__(self, plan: pa.Table, targets: list[TargetConfig], settings: RunSettings, run_dir: RunDir):
        self.plan = plan
        self.targets = targets
        self.settings = settings
        self.run_dir = run_dir
        self.slots: list[_Slot] = []
        self.ready_facts: list[dict] = []
        self.epoch: float | None = None
        self.lost_rows = 0
        self.lost_workers: list[dict] = []
        self.settled: list[ProgressSnapshot] = []  # dead workers' parts of the progress line
        self.cancelled = False
        self.link = DriverLink.listen(ray.util.get_node_ip_address())
        self._group = f"segment-{settings.segment}" if settings.segment else None
        self._prefix = f"s{settings.segment}-" if settings.segment else ""
        self._users: list[int | None] = []

    # -- start -----------------------------------------------------------------------------------
    def start(self, n_workers: int) -> None:
        shards = split_plan(self.plan, n_workers)
        # Closed loop: the users are spread over the workers as evenly as they go.
        concurrency = self.settings.concurrency
        self._users = [None] * n_workers
        if concurrency:
            self._users = [concurrency // n_workers + (i < concurrency % n_workers) for i in range(n_workers)]
        for i, shard in enumerate(shards):
            name = f"{self._prefix}w{i:03d}"
            # Each worker reads its share from the run directory in pieces (replay/run/plan_pieces.py):
            # a plan of millions of rows never travels through the object store.
            path = self.run_dir.write_plan_shard(name, shard, PIECE_ROWS, self._group)
            self.slots.append(self._start_actor(name, path, self._users[i], pairs_of(shard, self.targets)))

    def _next_node(self, avoid: str | None = None) -> str | None:
        """The live node with CPUs that holds the fewest of this run's live workers (None: let Ray
        choose); not `avoid` (where a worker just died: Ray may not know yet that the node is gone)
        unless it is the only one."""
        alive = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
        alive = [node for node in alive if node != avoid] or alive
        if not alive:
            return None
        load = {node: 0 for node in alive}
        for slot in self.slots:
            if slot.node in load and (slot.run_ref is not None or self.epoch is None):
                load[slot.node] += 1
        return min(alive, key=lambda node: (load[node], alive.index(node)))

    def _start_actor(
        self, name: str, path: Path, users: int | None, pairs: int | None, generation: int = 0, avoid: str | None = None
    ) -> _Slot:
        s = self.settings
        worker_settings = WorkerSettings(
            run_id=s.run_id,
            worker=name,
            run_dir=str(self.run_dir.path),
            keep_output_text=s.keep_output_text,
            block_size=s.block_size,
            concurrency=users,
            duration_s=s.duration_s,
            worker_count=len(self._users),
            busy_poll=s.busy_poll,
            cpus=tuple(s.worker_cpus) if s.worker_cpus else None,
            segment=s.segment,
            driver=self.link.address,
            pairs=pairs,
        )
        # Spread over the nodes one by one, each worker pinned to its node (Ray's soft affinity and
        # SPREAD both put every zero-CPU actor on the driver's node, on a two-node cluster here).
        node = self._next_node(avoid)
        strategy: Any = NodeAffinitySchedulingStrategy(node, soft=False) if node else "SPREAD"
        options = REPLAY_WORKER_ACTOR.options(num_cpus=0, max_concurrency=ACTOR_THREADS, scheduling_strategy=strategy)
        actor = options.remote(worker_settings, self.targets, str(path))
        return _Slot(name, path, actor, generation, node=node, pairs=pairs)

    def wait_ready(self) -> list[dict]:
        """Every worker's start-up facts. A worker that dies before it is ready (its node lost, or
        one Ray still counts alive) starts again on another node, up to MAX_REPLACEMENTS times."""
        for attempt in range(MAX_REPLACEMENTS + 1):
            waiting = [slot for slot in self.slots if slot.facts is None]
            refs = [slot.actor.ready.remote() for slot in waiting]
            failed: list[tuple[_Slot, ray.exceptions.RayActorError]] = []
            for slot, ref in zip(waiting, refs, strict=True):
                try:
                    slot.facts = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    failed.append((slot, exc))
            if not failed:
                break
            if attempt == MAX_REPLACEMENTS:
                raise failed[0][1]
            for slot, error in failed:
                why = worker_failure(error)
                print(f"replay: worker {slot.name} died while starting ({why}); starting it again", flush=True)
                position = self.slots.index(slot)  # only the first workers wait here: one per users entry
                users = self._users[position]
                again = self._start_actor(slot.name, slot.shard_path, users, slot.pairs, slot.generation, slot.node)
                self.slots[position] = again
        self.ready_facts = [slot.facts for slot in self.slots if slot.facts is not None]
        return self.ready_facts

    def run(self, epoch: float) -> None:
        self.epoch = epoch
        for slot in self.slots:
            slot.run_ref = slot.actor.run.remote(epoch)

    # -- while it runs ---------------------------------------------------------------------------
    def running(self) -> bool:
        return any(slot.run_ref is not None for slot in self.slots)

    def live_actors(self) -> list[Any]:
        """The workers not lost (running or done: a done worker still answers for its progress)."""
        return [slot.actor for slot in self.slots if not slot.lost]

    def wait(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for workers to end; a worker that died is replaced."""
        refs = {slot.run_ref: slot for slot in self.slots if slot.run_ref is not None}
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        for ref in done:
            slot = refs[ref]
            slot.run_ref = None
            try:
                ray.get(ref)
            except ray.exceptions.RayError as exc:
                print(f"replay: worker {slot.name} failed: {worker_failure(exc)}", flush=True)
                self._replace(slot)

    def _replace(self, slot: _Slot) -> None:
        """`worker_lost` rows for what the dead worker had in flight; its unsent rows to a replacement."""
        assert self.epoch is not None, "a worker runs only after the epoch is set"
        slot.lost = True
        lost_at_s = time.time() - self.epoch
        share = pq.read_table(slot.shard_path)
        index = self.run_dir.final_rows()
        in_flight = pc.less_equal(share.column("scheduled_s"), lost_at_s)
        lost = fill_missing_rows(
            share.filter(in_flight), self.targets, self.settings, self.run_dir, "worker_lost", LOST_IN_FLIGHT, index
        )
        unsent = without_final(share.filter(pc.invert(in_flight)), self.targets, index)
        replacement = None
        if unsent.num_rows and not self.settings.concurrency:  # closed loop: its users are gone with it
            replacement = self._start_replacement(slot, unsent)
            if replacement is None:
                lost += fill_missing_rows(
                    unsent, self.targets, self.settings, self.run_dir, "worker_lost", LOST_NOT_REPLACED, index
                )
        reassigned = pairs_of(unsent, self.targets) if replacement is not None else 0
        self.lost_rows += lost
        self.lost_workers.append(
            {
                "worker": slot.name,
                "lost_at_s": round(lost_at_s, 3),
                "worker_lost": lost,
                "reassigned": reassigned,
                "replaced_by": replacement.name if replacement is not None else None,
            }
        )
        self.settled.append(self._settled_part(share, pairs_of(share, self.targets) - reassigned))
        print(
            f"replay: worker {slot.name} lost at {lost_at_s:.1f} s: {lost} request(s) worker_lost, "
            f"{unsent.num_rows if replacement is not None else 0} unsent request(s) go to "
            f"{replacement.name if replacement is not None else 'no replacement'}",
            flush=True,
        )

    def _start_replacement(self, slot: _Slot, unsent: pa.Table) -> _Slot | None:
        """A new worker for `unsent`, running on the run's epoch; None when none could start."""
        generation = slot.generation + 1
        if generation > MAX_REPLACEMENTS:
            return None
        name = f"{slot.name.split('.r', 1)[0]}.r{generation}"
        path = self.run_dir.write_plan_shard(name, unsent, PIECE_ROWS, "replacements")
        replacement = self._start_actor(name, path, None, pairs_of(unsent, self.targets), generation, slot.node)
        try:
            replacement.facts = ray.get(replacement.actor.ready.remote())
        except ray.exceptions.RayError as exc:
            print(f"replay: replacement {name} failed to start: {worker_failure(exc)}", flush=True)
            return None
        replacement.run_ref = replacement.actor.run.remote(self.epoch)
        self.slots.append(replacement)
        self.ready_facts.append(replacement.facts)
        return replacement

    def _settled_part(self, share: pa.Table, pairs: int) -> ProgressSnapshot:
        """A dead worker's part of the progress line, from its rows on disk: done, by status."""
        finals = self.run_dir.scan_results().finals
        mine = finals.filter(
            pc.is_in(finals.column("request_id"), value_set=share.column("request_id").combine_chunks())
        )
        names = pa.array([t.name for t in self.targets], pa.string())
        mine = mine.filter(pc.is_in(mine.column("target"), value_set=names))
        by_status = ResultScan(mine, [], []).by_status()
        return ProgressSnapshot(scheduled=pairs, sent=pairs, done=pairs, by_status=by_status)

    def progress(self) -> ProgressSnapshot:
        """Every live worker's progress, plus what the dead ones settled (their rows on disk)."""
        return ProgressSnapshot.combine([_progress_of(self.live_actors()), *self.settled])

    # -- stop ------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ctrl-C: every live worker stops sending and records what it had; one that died meanwhile
        is skipped (its rows are filled). A second Ctrl-C kills the workers at once."""
        self.cancelled = True
        print("replay: stopping: the workers record what is in flight (Ctrl-C again to stop at once)", flush=True)
        try:
            for slot in self.slots:
                if slot.run_ref is None and self.epoch is not None:
                    continue
                try:
                    slot.actor.cancel.remote()
                except ray.exceptions.RayError:
                    continue
            refs = [slot.run_ref for slot in self.slots if slot.run_ref is not None]
            if refs:
                ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_S)
            for slot in self.slots:
                slot.run_ref = None
        except KeyboardInterrupt:
            for slot in self.slots:
                with contextlib.suppress(Exception):
                    ray.kill(slot.actor)
            left = without_final(self.plan, self.targets, self.run_dir.final_rows())
            print(
                f"replay: stopped at once: {pairs_of(left, self.targets)} (request, target) pair(s) have no final row; "
                f"`shadowreplay replay --resume {self.run_dir.path}` replays them",
                flush=True,
            )
            raise

    def close(self) -> None:
        self.link.close()
        for slot in self.slots:  # idle once their run returned; a cancel that timed out loses only what was in flight
            with contextlib.suppress(Exception):
                ray.kill(slot.actor)


def _progress_of(actors: list) -> ProgressSnapshot:
    """The sum of every live worker's progress (a dead worker's part is left out)."""
    snapshots = []
    for ref in [a.progress.remote() for a in actors]:
        try:
            snapshots.append(ray.get(ref, timeout=5))
        except (ray.exceptions.RayError, TimeoutError):
            continue
    return ProgressSnapshot.combine(snapshots)


def pairs_of(rows: pa.Table, targets: list[TargetConfig]) -> int:
    """(request, target) pairs of plan rows: every target, or a resumed row's `only_targets`."""
    if "only_targets" not in rows.column_names:
        return rows.num_rows * len(targets)
    only = rows.column("only_targets")
    every = pc.sum(pc.is_null(only)).as_py() or 0
    some = pc.sum(pc.list_value_length(only.filter(pc.is_valid(only)))).as_py() or 0
    return int(every * len(targets) + some)


def without_final(rows: pa.Table, targets: list[TargetConfig], index: FinalRowIndex) -> pa.Table:
    """The plan rows with a target still missing its final row, `only_targets` set to those
    targets (null where every target is missing): what is left to send."""
    if not rows.num_rows:
        return rows
    wanted = _wanted_masks(rows, targets)
    missing = {t.name: pc.and_(wanted[t.name], index.without_final(rows.column("request_id"), t.name)) for t in targets}
    flags = {name: mask.to_numpy(zero_copy_only=False) for name, mask in missing.items()}
    names = [t.name for t in targets]
    only: list[list[str] | None] = []
    keep: list[bool] = []
    for i in range(rows.num_rows):  # one small list per row left: resumes and lost shares are the few
        left = [name for name in names if flags[name][i]]
        keep.append(bool(left))
        only.append(None if len(left) == len(names) else left)
    column = pa.array(only, pa.list_(pa.string()))
    table = rows.drop_columns(["only_targets"]) if "only_targets" in rows.column_names else rows
    return table.append_column("only_targets", column).filter(pa.array(keep))


def _wanted_masks(rows: pa.Table, targets: list[TargetConfig]) -> dict[str, pa.Array]:
    """Per target, a mask of the rows that go to it (all, unless a row's `only_targets` says otherwise)."""
    n = rows.num_rows
    if "only_targets" not in rows.column_names:
        return {t.name: pa.array(np.ones(n, dtype=bool)) for t in targets}
    only = rows.column("only_targets").to_pylist()
    return {t.name: pa.array([o is None or t.name in o for o in only]) for t in targets}


_runner_writers = itertools.count()


def fill_missing_rows(
    plan: pa.Table,
    targets: list[TargetConfig],
    settings: RunSettings,
    run_dir: RunDir,
    status: str = "worker_lost",
    error: str = LOST_UNKNOWN,
    index: FinalRowIndex | None = None,
) -> int:
    """Write a final row of `status` for every (request, target) of `plan` that has none; returns how
    many. The plan and the index stay in Arrow: only the missing rows become Python objects."""
    index = index if index is not None else run_dir.final_rows()
    prefix = f"s{settings.segment}-" if settings.segment else ""
    writer = run_dir.result_writer(f"{prefix}runner{next(_runner_writers)}")
    missing = 0
    kept = ["request_id", "scheduled_s", "expected_prompt_tokens", "expected_completion_tokens", "clamped", "raised"]
    columns = plan.select([*kept, "tag"])  # a plan is built from traffic-log rows: it has every one
    wanted = _wanted_masks(plan, targets)
    for target in targets:
        mask = pc.and_(wanted[target.name], index.without_final(columns.column("request_id"), target.name))
        for row in columns.filter(mask).to_pylist():
            missing += 1
            writer.add(
                {
                    "run_id": settings.run_id,
                    "target": target.name,
                    "attempt": 1,
                    "final": True,
                    "worker": None,
                    "segment": settings.segment,
                    "status": status,
                    "error": error,
                    "token_times_ms": [],
                    **row,
                }
            )
    writer.close()
    return missing
