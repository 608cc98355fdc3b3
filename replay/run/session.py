"""The Session: what every verb that runs traffic shares, from the keys to the manifest.

`with Session(targets, run_dir) as session:` reads every target's key once (a key that cannot be
read is one clear error, before anything starts), loads every target's tokenizer once, starts a
vLLM server for each `kind: vllm` target (its log in the run directory), checks that every
target's endpoints answer (replay/targets/preflight.py: a tokenizer that does not load, or an
endpoint with nothing listening or that refuses the key, is one error, one line per target, before
any request is scheduled), starts a local Ray instance or joins `ray_address` (unless
`use_ray=False`), and hands out the run's telemetry samplers. Where it starts a server on this host
for workers on this host, or where the verb names the workers' CPUs (`worker_cpus`), it gives the
workers their own CPUs and the server and Ray's processes the others (`session.placement`,
replay/run/cpu_placement.py; the verbs pass `placement.loadgen_cpus` to the runner). On *any* exit (a normal end, an
error, Ctrl-C) it stops the servers it started by pid, stops the Ray instance it started, and
writes the run's manifest (`session.manifest`, filled in by the verb) with its `status` and every
secret removed by the run's one `Scrubber`. `replay`, `sweep` and `locust` use it, so each gets the
same guarantees without writing them again.

A verb whose manifest is written by another process (Locust's) passes `external_manifest=True`:
the Session then adds the servers and status to that file instead of replacing it, and writes its
own only when that process wrote none.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from shadowreplay.replay.run.cpu_placement import CpuPlacement, ProcessPriority, usable_cpus
from shadowreplay.replay.schemas.manifest import Manifest
from shadowreplay.replay.schemas.run_dir import RunDir
from shadowreplay.replay.secrets import Scrubber
from shadowreplay.replay.targets.config import TargetConfig, read_keys
from shadowreplay.replay.targets.preflight import check_endpoints, check_tokenizers
from shadowreplay.replay.telemetry.gpu_node_samplers import GpuNodeSamplers, print_line

ERROR_TEXT_LIMIT = 500


def start_local_servers(
    targets: Sequence[TargetConfig],
    run_dir: RunDir,
    stack: contextlib.ExitStack,
    cpus: Sequence[int] | None = None,
) -> tuple[list[TargetConfig], list[dict[str, Any]]]:
    """Start the vLLM servers of every `kind: vllm` target, `vllm.replicas` of them each, on this host's
    GPUs or on `cpus` (replay/targets/vllm_replicas.py), each stopped by `stack`. Every server is
    launched before any is waited for, so replicas load their models side by side. Returns the targets
    with their base_url (and, for several replicas, endpoints) set, and each server's identity (target,
    replica, version, arguments, served model, CPUs, GPUs, niceness) for the manifest."""
    from shadowreplay.replay.targets.vllm_replicas import replica_slots, visible_gpus

    fleets: list[tuple[TargetConfig, list[Any]]] = []
    gpus: list[str] | None = None  # asked for once, where the first fleet starts
    for target in targets:
        if target.kind != "vllm":
            fleets.append((target, []))
            continue
        from shadowreplay.replay.targets.vllm_server import VllmServer, default_vllm_python, free_ports

        launch = target.vllm
        assert launch is not None, "a vllm target has vllm settings (TargetConfig checks it)"
        if gpus is None:
            gpus = visible_gpus()
        several = launch.replicas > 1
        slots = replica_slots(target.name, launch.replicas, target.replica_gpus, gpus, cpus)
        ports = free_ports(launch.replicas) if several else [launch.port]
        servers = []
        for slot, port in zip(slots, ports, strict=True):
            server = VllmServer(
                model=launch.model,
                served_model_name=target.model,
                python=launch.python or default_vllm_python(),
                args=launch.args,
                port=port,
                env=launch.env,
                log_path=run_dir.server_log_path(target.name, slot.index if several else None),
                startup_timeout_s=launch.startup_timeout_s,
                cpus=slot.cpus,
                gpus=slot.gpus,
            )
            stack.callback(server.stop)
            server.launch()
            servers.append((slot, server))
        fleets.append((target, servers))
    ready: list[TargetConfig] = []
    identities: list[dict[str, Any]] = []
    for target, servers in fleets:
        if not servers:
            ready.append(target)
            continue
        for slot, server in servers:
            server.wait_ready()
            replica = {"replica": slot.index, "cpus_shared": slot.shared} if len(servers) > 1 else {}
            identities.append({"target": target.name, **replica, **server.identity()})
        urls = [server.base_url for _, server in servers]
        update: dict[str, Any] = {"base_url": urls[0], "endpoints": urls if len(urls) > 1 else None}
        ready.append(target.model_copy(update=update))
    return ready, identities


class Session:
    """Keys, local servers, Ray and the manifest of one run of a verb (see the module docstring)."""

    def __init__(
        self,
        targets: Sequence[TargetConfig],
        run_dir: RunDir,
        *,
        use_ray: bool = True,
        ray_address: str | None = None,
        external_manifest: bool = False,
        worker_cpus: Sequence[int] | None = None,
        manifest: Manifest | None = None,
    ):
        self.configured_targets = list(targets)
        self.run_dir = run_dir
        self.use_ray = use_ray
        self.ray_address = ray_address
        self.external_manifest = external_manifest
        self.scrubber = Scrubber()
        self.targets: list[TargetConfig] = []  # with the started servers' base_url, once entered
        self.servers: list[dict[str, Any]] = []
        self.cluster: dict[str, Any] | None = None
        self.placement = CpuPlacement.plan(
            usable_cpus(),
            local_server=any(t.kind == "vllm" for t in self.configured_targets),
            local_workers=not ray_address,  # a local Ray instance, or Locust's own processes here
            worker_cpus=worker_cpus,  # --worker-cpus: the user's choice (cpu_placement.py)
        )
        # A resume carries on the run's own manifest (replay/run/replay_session.py resume_run).
        self.manifest = manifest or Manifest(targets=[t.public_dict() for t in self.configured_targets])
        self._stack = contextlib.ExitStack()
        self._started_ray = False
        self._gpu_lines: set[str] = set()

    def __enter__(self) -> Session:
        self.scrubber = Scrubber(read_keys(self.configured_targets))
        self.manifest.started_at = self.manifest.started_at or time.time()
        try:
            check_tokenizers(self.configured_targets)  # before a vLLM server spends minutes starting
            self.targets, self.servers = start_local_servers(
                self.configured_targets, self.run_dir, self._stack, self.placement.server_cpus
            )
            for warning in check_endpoints(self.targets):  # every replica answers, before Ray and any request
                print(f"WARNING: {warning}", flush=True)
            self.manifest.targets = [t.public_dict() for t in self.targets]
            self.manifest.placement = self.placement.model_dump()
            driver = ProcessPriority.current()  # the user's own process: recorded, never changed
            self.manifest.driver = driver.model_dump()
            if line := driver.warning("this process (the telemetry samplers, the live display)"):
                print(f"WARNING: {line}", flush=True)
            self.manifest.servers = self.servers
            if self.use_ray:
                self._start_ray()
        except BaseException as exc:
            self._finish(exc)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._finish(exc)

    # -- what the verbs ask for ------------------------------------------------------------------
    def telemetry_samplers(self, run_id: str, run_dir: RunDir) -> list[Any]:
        """The samplers that run in this process: the Prometheus /metrics (1 Hz) of every server
        the session started and of every target that names a `metrics_url`. GPUs are sampled by
        `gpu_samplers`, on their own nodes."""
        from shadowreplay.replay.schemas.telemetry import server_device
        from shadowreplay.replay.telemetry.prometheus_sampler import PrometheusSampler, ScrapeTarget

        scrape = [
            ScrapeTarget(server_device(s["target"], s.get("replica")), s["url"] + "/metrics")
            for s in self.servers
            if s.get("url")
        ]
        scrape += [ScrapeTarget(t.name, t.metrics_url) for t in self.targets if t.metrics_url]
        return [PrometheusSampler(run_id, run_dir.telemetry_dir, scrape)] if scrape else []

    def gpu_samplers(self, run_id: str, run_dir: RunDir, report_once: bool = False) -> GpuNodeSamplers:
        """NVML sampler actors for every GPU node of the cluster (a context manager); where NVML is
        off, one line says so (with `report_once`, once per session, for a sweep's many points)."""
        report: Callable[[str], None] = self._report_once if report_once else print_line
        return GpuNodeSamplers(run_id, run_dir.telemetry_dir, report=report)

    def write_manifest(self, run_dir: RunDir, manifest: Manifest) -> None:
        """Write another run directory's manifest (a sweep point's) with this session's servers,
        cluster and scrubber."""
        manifest.servers = manifest.servers or self.servers
        manifest.cluster = manifest.cluster or self.cluster
        manifest.placement = manifest.placement or self.manifest.placement
        manifest.driver = manifest.driver or self.manifest.driver
        run_dir.write_manifest(manifest, self.scrubber)

    def error_text(self, exc: BaseException) -> str:
        """An exception as a line for the manifest or the console, secrets removed, cut to length."""
        return self.scrubber.cut(f"{type(exc).__name__}: {exc}", ERROR_TEXT_LIMIT)

    # -- internals -------------------------------------------------------------------------------
    def _start_ray(self) -> None:
        import ray

        from shadowreplay.replay.run.runner import start_ray

        self._started_ray = not ray.is_initialized()
        self.cluster = start_ray(self.ray_address, self.placement.ray_cpus)
        self.manifest.cluster = self.cluster

    def _report_once(self, line: str) -> None:
        if line not in self._gpu_lines:
            self._gpu_lines.add(line)
            print_line(line)

    def _finish(self, exc: BaseException | None) -> None:
        """Stop what the session started, then write the manifest, whatever happened."""
        try:
            self._stack.close()  # the servers, stopped by pid
        finally:
            try:
                if self._started_ray:
                    import ray

                    ray.shutdown()
                    self._started_ray = False
            finally:
                self._write_final_manifest(exc)

    def _write_final_manifest(self, exc: BaseException | None) -> None:
        manifest = self.manifest
        manifest.ended_at = time.time()
        if exc is None:
            manifest.status = manifest.status if manifest.status not in (None, "running") else "completed"
        elif isinstance(exc, KeyboardInterrupt):
            manifest.status = "interrupted"
        else:
            manifest.status = "failed"
            manifest.error = self.error_text(exc)
        if manifest.segments and manifest.segments[-1].status == "running":  # the segment ended with the run
            manifest.segments[-1].status = manifest.status
            manifest.segments[-1].ended_at = manifest.ended_at
        if self.external_manifest:
            updated = self.run_dir.update_manifest(
                self.scrubber,
                servers=self.servers,
                placement=manifest.placement,
                driver=manifest.driver,
                status=manifest.status,
                error=manifest.error,
            )
            if updated is not None:
                return
        self.run_dir.write_manifest(manifest, self.scrubber)
