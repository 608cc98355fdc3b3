"""Builds telemetry samples in the long form of docs/DESIGN.md and writes them under RUN_DIR/telemetry.

`gpu_samples` makes one GPU's NVML series from per-sample utilisation and power, with an energy
counter that integrates that power exactly by the trapezoid rule (so a test can check the counter
and the power integral against each other); `server_samples` makes a vLLM /metrics series.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shadowreplay.analysis.data.telemetry_data import VLLM_KV_CACHE_USAGE, VLLM_RUNNING, VLLM_WAITING
from shadowreplay.replay.schemas.telemetry import (
    NVML_ENERGY,
    NVML_GPU_UTIL,
    NVML_MEM_TOTAL,
    NVML_MEM_USED,
    NVML_MEM_UTIL,
    NVML_POWER,
    SOURCE_NVML,
    SOURCE_PROMETHEUS,
    TELEMETRY_SCHEMA,
)
from tests.support.results_factory import RUN_ID

MEM_TOTAL_BYTES = 80 * 1024**3

Floats = Sequence[float] | np.ndarray  # a series: a list, or a numpy array of floats


def sample(
    metric: str,
    t_s: float,
    value: float,
    *,
    source: str = SOURCE_NVML,
    device: str = "0",
    host: str = "node-a",
    run_id: str = RUN_ID,
    gpu_uuid: str | None = None,
    pci_bus_id: str | None = None,
) -> dict:
    """One telemetry row."""
    return {
        "run_id": run_id,
        "source": source,
        "host": host,
        "device": device,
        "t_s": t_s,
        "metric": metric,
        "value": value,
        "gpu_uuid": gpu_uuid,
        "pci_bus_id": pci_bus_id,
    }


def gpu_samples(
    times_s: Floats,
    util_pct: Floats,
    power_w: Floats,
    mem_used_bytes: Floats,
    *,
    device: str = "0",
    host: str = "node-a",
    energy_start_j: float = 1.0e6,
    with_energy: bool = True,
) -> list[dict]:
    """NVML rows for one GPU: utilisation (GPU = memory utilisation / 2 + 10), memory, power, energy counter."""
    increments = [0.0] + [
        (power_w[i] + power_w[i - 1]) / 2 * (times_s[i] - times_s[i - 1]) for i in range(1, len(times_s))
    ]
    energy = [energy_start_j + e for e in accumulate(increments)]
    rows = []
    for i, t in enumerate(times_s):
        rows += [
            sample(NVML_GPU_UTIL, t, util_pct[i], device=device, host=host),
            sample(NVML_MEM_UTIL, t, util_pct[i] / 2 + 10, device=device, host=host),
            sample(NVML_MEM_USED, t, mem_used_bytes[i], device=device, host=host),
            sample(NVML_MEM_TOTAL, t, MEM_TOTAL_BYTES, device=device, host=host),
            sample(NVML_POWER, t, power_w[i], device=device, host=host),
        ]
        if with_energy:
            rows.append(sample(NVML_ENERGY, t, energy[i], device=device, host=host))
    return rows


def server_samples(
    target: str,
    times_s: Floats,
    kv_fraction: Floats,
    running: Floats,
    waiting: Floats,
    host: str = "node-a",
) -> list[dict]:
    """vLLM /metrics rows for one target: KV-cache usage (a fraction), running and waiting requests."""
    rows = []
    for i, t in enumerate(times_s):
        for metric, value in (
            (VLLM_KV_CACHE_USAGE[0], kv_fraction[i]),
            (VLLM_RUNNING, running[i]),
            (VLLM_WAITING, waiting[i]),
        ):
            rows.append(sample(metric, t, value, source=SOURCE_PROMETHEUS, device=target, host=host))
    return rows


def write_telemetry(
    run_dir: Path, rows: Sequence[dict], name: str = "telemetry-node-a.parquet", schema: pa.Schema = TELEMETRY_SCHEMA
) -> Path:
    """Write `rows` as one Parquet file under RUN_DIR/telemetry."""
    directory = Path(run_dir) / "telemetry"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    pq.write_table(pa.Table.from_pylist(list(rows), schema=schema), path)
    return path
