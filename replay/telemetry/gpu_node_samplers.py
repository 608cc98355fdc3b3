"""GPU telemetry across a Ray cluster: one NVML sampler actor on every node that has GPUs.

A node has GPUs when Ray says so: it is alive and its `Resources["GPU"] > 0` (ray.nodes()). Each
such node gets one `NodeNvmlSamplerActor`, pinned there by `NodeAffinitySchedulingStrategy(node_id,
soft=False)`, asking for `num_gpus=0` (it must never take a GPU from vLLM; NVML sees every GPU of
the host anyway) and `num_cpus=0` (one sampling thread at 10 Hz costs well under 1% of a core).

Each actor wraps a `NvmlSampler` (replay/telemetry/nvml_sampler.py) and writes its own shards,
`nvml-<host>-<pid>-<seq>.parquet`, straight into RUN_DIR/telemetry/ with its host name in the
`host` column. Multi-node runs assume RUN_DIR is on a file system every node mounts at the same
path (as the replay workers' results do).

Clock: the driver sends only the run's epoch (wall-clock seconds); each actor builds its own
`ClockMapping(measure_wall_minus_perf(), epoch)` in its process, the rule every replay worker
uses, so `t_s = perf_counter() + (time() - perf_counter()) - epoch` is on the results' timeline
on any host whose wall clock is synchronised.

Telemetry off, and the run goes on: with no GPU node in the cluster, one line
`telemetry: NVML off (no node with GPUs in the Ray cluster)`; a node whose actor finds no NVML
module, no NVML library or no GPU, or whose actor fails, gives one line
`telemetry: NVML off on <host> (<reason>)`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from shadowreplay.replay.clock import ClockMapping
from shadowreplay.replay.run.cpu_placement import ProcessPriority
from shadowreplay.replay.schemas.telemetry import SOURCE_NVML
from shadowreplay.replay.telemetry.nvml_sampler import DEFAULT_INTERVAL_S, DEFAULT_NVML_MODULE, NvmlSampler, load_nvml

log = logging.getLogger(__name__)

NO_GPU_NODE_REASON = "no node with GPUs in the Ray cluster"
NO_GPU_NODE_LINE = f"telemetry: NVML off ({NO_GPU_NODE_REASON})"
CALL_TIMEOUT_S = 60.0  # an actor's start-up (a new worker process, nvmlInit) and each call


def node_off_line(host: str, reason: str) -> str:
    """The one line that says NVML telemetry is off on one node, and why."""
    return f"telemetry: NVML off on {host} ({reason})"


def print_line(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class GpuNode:
    """An alive Ray node with GPUs, as ray.nodes() describes it."""

    node_id: str
    host: str
    address: str
    gpus: float


def gpu_nodes(nodes: list[dict] | None = None) -> list[GpuNode]:
    """The alive nodes of `nodes` (default: ray.nodes() of the connected cluster) with
    Resources["GPU"] > 0, in the order Ray lists them."""
    listed = ray.nodes() if nodes is None else nodes
    return [
        GpuNode(
            node_id=n["NodeID"],
            host=n.get("NodeManagerHostname", ""),
            address=n.get("NodeManagerAddress", ""),
            gpus=float(n["Resources"]["GPU"]),
        )
        for n in listed
        if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0
    ]


class NodeNvmlSampler:
    """One NvmlSampler in the process of a Ray actor. The actor class is `NodeNvmlSamplerActor`;
    this plain class is what it runs, so its logic needs no Ray to read."""

    def __init__(
        self,
        run_id: str,
        telemetry_dir: str,
        interval_s: float = DEFAULT_INTERVAL_S,
        nvml_module: str = DEFAULT_NVML_MODULE,
        max_rows: int = 50_000,
        max_age_s: float = 30.0,
    ):
        self.host = socket.gethostname()
        self.priority = ProcessPriority.raise_to()  # Ray's workers start at nice 15 (replay/run/cpu_placement.py)
        # Imported here, in this process (a stand-in must be importable here), while the run is
        # still starting; one that cannot be is left to NvmlSampler.start() to say why.
        try:
            nvml: Any = load_nvml(nvml_module)
        except ImportError:
            nvml = nvml_module
        self.sampler = NvmlSampler(
            run_id,
            telemetry_dir,
            interval_s=interval_s,
            host=self.host,
            nvml=nvml,
            max_rows=max_rows,
            max_age_s=max_age_s,
        )

    def where(self) -> dict:
        """Where this actor runs: host, Ray node id, pid and priority."""
        node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        return {"host": self.host, "node_id": node_id, "pid": os.getpid(), "nice": self.priority.nice}

    def start(self, epoch: float) -> dict:
        """Start sampling on the run's timeline that begins at wall-clock `epoch`; returns
        {"available", "reason", "gpus"} (NVML status, never raises for a missing NVML)."""
        clock = ClockMapping(ClockMapping.measure_wall_minus_perf(), epoch)
        status = self.sampler.start(clock)
        return {"available": status.available, "reason": status.reason, "gpus": list(status.gpus)}

    def stop(self) -> dict:
        """Stop sampling, write what is buffered; the sampler's stats() and where it ran."""
        return {**self.sampler.stop(), **self.where()}


NodeNvmlSamplerActor = ray.remote(NodeNvmlSampler)


class GpuNodeSamplers:
    """NVML sampling on every GPU node of the connected Ray cluster, for one run.

    place() puts one actor on each GPU node (their processes start while the caller goes on),
    wait_ready() waits for them, start(epoch) starts them on the run's timeline, stop() stops them,
    kills them and returns one stats dict per GPU node (or one saying there was none); also on
    leaving a `with` block. Lines saying telemetry is off go to `report` (default: print).
    `nvml_module` is the import spec (`module[:attribute]`) of the NVML module the actors load:
    pynvml by default; a test names a stand-in importable in Ray's workers.
    """

    def __init__(
        self,
        run_id: str,
        telemetry_dir: str | os.PathLike,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        nvml_module: str = DEFAULT_NVML_MODULE,
        max_rows: int = 50_000,
        max_age_s: float = 30.0,
        report: Callable[[str], None] = print_line,
        call_timeout_s: float = CALL_TIMEOUT_S,
    ):
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.run_id = run_id
        self.telemetry_dir = os.fspath(telemetry_dir)
        self.interval_s = interval_s
        self.nvml_module = nvml_module
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.report = report
        self.call_timeout_s = call_timeout_s
        self.nodes: list[GpuNode] | None = None  # None until place()
        self.actors: dict[str, Any] = {}  # node_id -> actor handle, for the nodes still sampling
        self.off: dict[str, str] = {}  # node_id -> why NVML is off there
        self._where: dict[str, Any] = {}  # node_id -> ref of the actor's where() until wait_ready()
        self._stats: list[dict] | None = None

    def place(self) -> list[GpuNode]:
        """One sampler actor per GPU node of the cluster (non-blocking; idempotent). With no GPU
        node: reports NO_GPU_NODE_LINE and creates nothing."""
        if self.nodes is not None:
            return self.nodes
        self.nodes = gpu_nodes()
        if not self.nodes:
            self.report(NO_GPU_NODE_LINE)
            return self.nodes
        for node in self.nodes:
            self.actors[node.node_id] = NodeNvmlSamplerActor.options(
                name=f"nvml-sampler-{self.run_id}-{node.node_id[:12]}",
                num_cpus=0,
                num_gpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node.node_id, soft=False),
            ).remote(self.run_id, self.telemetry_dir, self.interval_s, self.nvml_module, self.max_rows, self.max_age_s)
            self._where[node.node_id] = self.actors[node.node_id].where.remote()
        return self.nodes

    def wait_ready(self) -> dict[str, dict]:
        """Wait until every placed actor's process is up (call it before choosing the epoch, so
        sampling can begin before the run does); returns node_id -> where it runs. A node whose
        actor cannot start is reported in one line and left out."""
        self.place()
        ready: dict[str, dict] = {}
        for node_id, ref in list(self._where.items()):
            try:
                ready[node_id] = ray.get(ref, timeout=self.call_timeout_s)
            except (ray.exceptions.RayError, TimeoutError) as exc:
                self._set_off(node_id, f"sampler actor did not start: {_error_line(exc)}")
                ray.kill(self.actors.pop(node_id))
        self._where = {}
        return ready

    def start(self, epoch: float) -> dict[str, dict]:
        """Start every placed actor on the timeline that begins at wall-clock `epoch`; returns
        node_id -> NVML status. A node where NVML is off, or whose actor fails, is reported in one
        line and left out; the others go on."""
        self.wait_ready()
        refs = {node_id: actor.start.remote(epoch) for node_id, actor in self.actors.items()}
        statuses: dict[str, dict] = {}
        for node_id, ref in refs.items():
            try:
                status = ray.get(ref, timeout=self.call_timeout_s)
            except (ray.exceptions.RayError, TimeoutError) as exc:
                status = {"available": False, "reason": f"sampler actor failed: {_error_line(exc)}", "gpus": []}
            statuses[node_id] = status
            if not status["available"]:
                self._set_off(node_id, status["reason"])
        return statuses

    def stop(self) -> list[dict]:
        """Stop every actor, write what each has buffered, kill them; one stats dict per GPU node
        (NvmlSampler.stats() plus host, node_id, pid), or one saying no node had GPUs. Idempotent."""
        if self._stats is not None:
            return self._stats
        hosts = {node.node_id: node.host for node in self.nodes or []}
        refs = {node_id: actor.stop.remote() for node_id, actor in self.actors.items()}
        stats: list[dict] = [  # nodes whose actor never started
            {"source": SOURCE_NVML, "host": hosts[node_id], "node_id": node_id, "available": False, "reason": reason}
            for node_id, reason in self.off.items()
            if node_id not in refs
        ]
        for node_id, ref in refs.items():
            try:
                node_stats = ray.get(ref, timeout=self.call_timeout_s)
            except (ray.exceptions.RayError, TimeoutError) as exc:
                self._set_off(node_id, f"sampler actor lost: {_error_line(exc)}")
                node_stats = {"source": SOURCE_NVML, "host": hosts[node_id], "node_id": node_id, "available": False}
            if node_id in self.off:
                node_stats["reason"] = self.off[node_id]
            stats.append(node_stats)
        for actor in self.actors.values():
            ray.kill(actor)
        self.actors = {}
        if self.nodes is not None and not self.nodes:
            stats.append({"source": SOURCE_NVML, "available": False, "reason": NO_GPU_NODE_REASON})
        self._stats = stats
        return stats

    def _set_off(self, node_id: str, reason: str) -> None:
        if node_id in self.off:
            return
        self.off[node_id] = reason
        host = next((n.host for n in self.nodes or [] if n.node_id == node_id), node_id)
        self.report(node_off_line(host, reason))

    def __enter__(self) -> GpuNodeSamplers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _error_line(exc: BaseException) -> str:
    """`Type: first line` of an error; for a RayTaskError, of the exception the actor raised
    (its own text carries the remote traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
