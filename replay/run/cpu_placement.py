"""Where the load generator runs beside what it measures: its CPU priority and, beside a local
server, its own cores.

A load generator that gets the CPU after the server it measures sends late and stamps tokens late,
and every latency it reports is then partly its own. Two rules keep it off the server's back:

- **Priority**: replay workers and telemetry samplers run at nice `LOADGEN_NICE` (0) or better.
  Ray starts worker processes at nice 15 by default (its `worker_niceness`); a local instance is
  started with `worker_niceness` 0 (replay/run/runner.py), and every worker and sampler actor
  checks its own priority when it starts (`ProcessPriority.raise_to`): above 0 (a joined cluster
  started with Ray's default) it asks the kernel for 0, and where that is refused (no
  CAP_SYS_NICE) the facts say so, one console line says so, and the manifest records it.
- **Cores** (`CpuPlacement`): where the session starts a vLLM server on this host and the workers
  run on this host too (a local Ray instance, or Locust's processes), the host's usable CPUs are
  split in two: the first `loadgen_share` of them (at least one) for the replay workers (their
  affinity), the rest for the server's compute threads (vLLM-CPU's `VLLM_CPU_OMP_THREADS_BIND`,
  unless the target's own env sets it; its API server process is left to the kernel, see
  replay/targets/vllm_server.py). On this project's 2-core CI machine that is one CPU each, the
  split vLLM's own automatic binding makes there (model threads on one CPU, the other reserved),
  with the workers on the reserved one. With a single usable CPU, or a remote server, or workers
  on other nodes, nothing is split and the placement says why.
- **Chosen worker cores** (`--worker-cpus`): the user names the CPUs of this host the replay workers
  run on. The rest of the usable CPUs then take everything else the session starts here: a local
  server's compute threads, and the local Ray instance's own processes (GCS, raylet, log and memory
  monitors; `ray_cpus`, replay/run/runner.py start_ray). Those wake tens of times a second; on a
  worker's core each wake-up delays a send that falls due then (measured by scripts/bench_loadgen.py's
  split phase: about +0.65 ms of send lateness p99 at 250 req/s on one shared core).

Both are recorded: the placement in the manifest's `placement`, each worker's priority and cores
in `workers[]`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict

from shadowreplay.errors import UserError

LOADGEN_NICE = 0  # the replay workers' and samplers' niceness: never below the default priority
LOADGEN_SHARE = 0.25  # of a host's CPUs for the replay workers where a local server takes the rest


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity), in order."""
    return sorted(os.sched_getaffinity(0))


def cpu_list(cpus: Sequence[int]) -> str:
    """CPU ids as Linux and vLLM write them: "0", "1-3", "0,2-5"."""
    parts: list[str] = []
    ordered = sorted(set(cpus))
    start = previous = None
    for cpu in [*ordered, None]:
        if cpu is not None and previous is not None and cpu == previous + 1:
            previous = cpu
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = cpu
    return ",".join(parts)


class CpuPlacement(BaseModel):
    """Which CPUs the replay workers and the local server's compute threads get (None: not pinned), and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    loadgen_cpus: list[int] | None = None
    server_cpus: list[int] | None = None
    ray_cpus: list[int] | None = None  # a local Ray instance's own processes (None: where the kernel puts them)
    reason: str

    @classmethod
    def plan(
        cls,
        cpus: Sequence[int],
        *,
        local_server: bool,
        local_workers: bool,
        loadgen_share: float = LOADGEN_SHARE,
        worker_cpus: Sequence[int] | None = None,
    ) -> CpuPlacement:
        """Split `cpus` between the workers and a local server, or give the workers `worker_cpus` and
        everything else the rest (see the module docstring)."""
        if worker_cpus:
            return cls._chosen(cpus, worker_cpus, local_server=local_server, local_workers=local_workers)
        if not local_server:
            return cls(reason="no local server: the workers keep every CPU")
        if not local_workers:
            return cls(reason="workers on a joined cluster: no cores are split on this host")
        if len(cpus) < 2:
            return cls(reason=f"one usable CPU ({cpu_list(cpus)}): the server and the workers share it")
        ordered = sorted(cpus)
        n_loadgen = min(len(ordered) - 1, max(1, round(len(ordered) * loadgen_share)))
        loadgen, server = ordered[:n_loadgen], ordered[n_loadgen:]
        return cls(
            loadgen_cpus=loadgen,
            server_cpus=server,
            reason=(
                f"local server's compute threads on CPUs {cpu_list(server)}, replay workers on CPUs {cpu_list(loadgen)}"
            ),
        )

    @classmethod
    def _chosen(
        cls, cpus: Sequence[int], worker_cpus: Sequence[int], *, local_server: bool, local_workers: bool
    ) -> CpuPlacement:
        """The workers on `worker_cpus`; a local server and the local Ray's processes on the rest."""
        chosen = sorted(set(worker_cpus))
        if not local_workers:
            raise UserError(
                f"--worker-cpus {cpu_list(chosen)} pins workers on this host, but with --address they run on the "
                "cluster's nodes: leave one of the two out"
            )
        outside = [cpu for cpu in chosen if cpu not in cpus]
        if outside:
            raise UserError(
                f"--worker-cpus {cpu_list(chosen)}: CPU {cpu_list(outside)} is not one this process may use "
                f"(usable: {cpu_list(cpus)})"
            )
        rest = [cpu for cpu in sorted(cpus) if cpu not in chosen]
        if local_server and not rest:
            raise UserError(
                f"--worker-cpus {cpu_list(chosen)} leaves no CPU for the local vLLM server (usable: {cpu_list(cpus)})"
            )
        if not rest:
            return cls(
                loadgen_cpus=chosen,
                reason=f"replay workers on CPUs {cpu_list(chosen)} (--worker-cpus), Ray beside them",
            )
        others = "the local server's compute threads and Ray's own processes" if local_server else "Ray's own processes"
        return cls(
            loadgen_cpus=chosen,
            server_cpus=rest if local_server else None,
            ray_cpus=rest,
            reason=f"replay workers on CPUs {cpu_list(chosen)} (--worker-cpus), {others} on CPUs {cpu_list(rest)}",
        )


def _for_every_other_thread(change: Callable[[int], None]) -> None:
    """`change(thread id)` for every thread of this process but the calling one (Linux: /proc/self/task;
    elsewhere none); a thread that ended meanwhile is passed over."""
    try:
        tids = [int(name) for name in os.listdir("/proc/self/task")]
    except OSError:
        return
    for tid in tids:
        if tid == threading.get_native_id():
            continue
        try:
            change(tid)
        except ProcessLookupError:
            continue


def descendant_processes(root: int | None = None) -> dict[int, str]:
    """Every process descended from `root` (default: this one) now, pid -> name (Linux: /proc; elsewhere
    none). A process that ends while it is read is passed over."""
    parents: dict[int, tuple[int, str]] = {}
    try:
        entries = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return {}
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        # "pid (name) state ppid ...": the name may hold spaces and parentheses, so split at the last ")"
        name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
        parents[int(entry)] = (int(rest[1]), name)
    found: dict[int, str] = {}
    frontier = [os.getpid() if root is None else root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, name) in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = name
                frontier.append(pid)
    return found


def process_cpus(processes: dict[int, str]) -> list[dict[str, object]]:
    """Each process's name, pid and CPUs (its main thread's affinity), for the manifest."""
    facts: list[dict[str, object]] = []
    for pid, name in sorted(processes.items()):
        try:
            facts.append({"name": name, "pid": pid, "cpus": sorted(os.sched_getaffinity(pid))})
        except OSError:  # ended meanwhile
            continue
    return facts


class ProcessPriority(BaseModel):
    """A process's scheduling facts as the manifest records them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nice_at_start: int
    nice: int
    cpus: list[int]
    refused: str | None = None  # why the priority could not be raised (then nice > the wanted one)

    @classmethod
    def current(cls) -> ProcessPriority:
        """This process's niceness and CPUs, unchanged."""
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        return cls(nice_at_start=nice, nice=nice, cpus=usable_cpus())

    @classmethod
    def raise_to(cls, nice: int = LOADGEN_NICE, cpus: Sequence[int] | None = None) -> ProcessPriority:
        """Run this process at `nice` or better, on `cpus` where given (None: as it is). Linux keeps both
        per thread (setpriority and sched_setaffinity of pid 0 change the calling thread only), so every
        thread the process has is changed: a Ray actor's methods run on threads its __init__ does not."""
        at_start = os.getpriority(os.PRIO_PROCESS, 0)
        refused = None
        if at_start > nice:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, nice)
                _for_every_other_thread(lambda tid: os.setpriority(os.PRIO_PROCESS, tid, nice))
            except OSError as exc:  # no CAP_SYS_NICE: a cluster started with Ray's default niceness
                refused = f"nice {at_start} could not be raised to {nice}: {exc.strerror or exc}"
        if cpus:
            os.sched_setaffinity(0, cpus)
            _for_every_other_thread(lambda tid: os.sched_setaffinity(tid, cpus))
        return cls(nice_at_start=at_start, nice=os.getpriority(os.PRIO_PROCESS, 0), cpus=usable_cpus(), refused=refused)

    def warning(self, who: str) -> str | None:
        """One line for the console where this process runs below the load generator's priority."""
        if self.nice <= LOADGEN_NICE:
            return None
        return (
            f"{who} runs at nice {self.nice} ({self.refused or 'not raised'}): beside a busy server it gets the CPU "
            "last and sends late; start the cluster's nodes with RAY_worker_niceness=0 or grant CAP_SYS_NICE"
        )
