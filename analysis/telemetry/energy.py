"""GPU utilisation, memory, power and energy per output token, from a run's NVML telemetry.

Definitions (`DEFINITIONS` carries them into summary.json):
- Samples: NVML telemetry (source `nvml`), one series per (host, device) and metric.
- Utilisation (GPU, memory) and power: mean and p95 (analysis/metrics/table.py percentile) of the samples
  whose t_s is in the run's steady window; over all devices together, and per device. Total power
  = the sum of the devices' mean power.
- Memory high-water mark: the largest `mem_used_bytes` sample of the whole run (warm-up included).
- Energy in the window, per device: the total-energy counter (`energy_j`) at the window's end minus
  at its start, each read by linear interpolation between the neighbouring samples; when a device
  has no counter (or it went backwards), the trapezoid integral of `power_w` over the same
  interval. Where the samples do not reach a window edge, the interval stops at the last sample
  (`covered_s` says how much of the window was measured).
- Joules per output token = the devices' energy in the window / output tokens completed in the
  window (analysis/metrics/table.py) by the targets the GPUs served: targets of kind `vllm` in the
  manifest (started by the run on its GPU nodes). Withheld (null, with `withheld` saying why) when
  no such target ran (the GPUs' energy is not a hosted API's tokens' cost) or when a device's energy
  does not cover the whole window (its samples stop early, or it fell off the bus: its `lost_at_s`,
  from the sampler's `gpu_lost` row).
No NVML samples: the block says absent, with the reason; nothing is estimated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal, cast

import polars as pl

from shadowreplay.analysis.data.telemetry_data import Telemetry
from shadowreplay.analysis.metrics import table as metrics
from shadowreplay.replay.schemas.telemetry import (
    NVML_ENERGY,
    NVML_GPU_LOST,
    NVML_GPU_UTIL,
    NVML_MEM_TOTAL,
    NVML_MEM_USED,
    NVML_MEM_UTIL,
    NVML_POWER,
    SOURCE_NVML,
)

DEFINITIONS = {
    "utilisation_and_power": "mean and p95 of the NVML samples in the steady window (all devices pooled, and "
    "per device); total power = sum of the devices' mean power",
    "memory_high_water": "largest mem_used_bytes sample of the whole run",
    "energy": "per device: energy_j counter at the window end - at its start (linear interpolation between "
    "samples); without a counter, the trapezoid integral of power_w over the same interval",
    "joules_per_output_token": "sum of the devices' energy in the window / output tokens completed in the "
    "window by the targets the GPUs served (kind vllm in the manifest); withheld without such a target or "
    "when a device's energy does not cover the whole window",
}
COVERED_SHARE = 0.99
"""A device's energy covers the window when it was measured over at least this share of it."""

EnergyMethod = Literal["counter", "power_integral"]


def served_targets(targets: Iterable[str], target_configs: dict[str, dict[str, Any]]) -> list[str]:
    """The targets whose tokens the GPUs produced: those of kind `vllm` in the manifest (none: none)."""
    return [name for name in sorted(targets) if (target_configs.get(name) or {}).get("kind") == "vllm"]


def window_series(series: pl.DataFrame, window: metrics.Window) -> pl.DataFrame:
    """One metric's samples (t_s, value) within the window, with values at the window's edges interpolated
    linearly between neighbouring samples (an edge outside the samples' range is left out)."""
    edges = pl.DataFrame({"t_s": [window.start_s, window.end_s]}, schema={"t_s": pl.Float64}).join(
        series.select("t_s"), on="t_s", how="anti"
    )
    combined = pl.concat(
        [series.select("t_s", "value"), edges.with_columns(pl.lit(None, dtype=pl.Float64).alias("value"))]
    ).sort("t_s")
    return (
        combined.with_columns(pl.col("value").interpolate_by("t_s"))
        .filter(pl.col("t_s").is_between(window.start_s, window.end_s, closed="both"))
        .drop_nulls("value")
    )


def _stats(samples: pl.DataFrame, metric: str) -> dict[str, float | None]:
    values = metrics.telemetry_values(metric)
    row = samples.select(values.mean().alias("mean"), metrics.percentile(values, 95.0).alias("p95")).row(0)
    return {"mean": row[0], "p95": row[1]}


def device_energy(device: pl.DataFrame, window: metrics.Window) -> tuple[float | None, EnergyMethod | None, float]:
    """(joules, method, covered seconds) for one device's samples over the window."""
    ways: tuple[tuple[str, EnergyMethod, pl.Expr], ...] = (
        (NVML_ENERGY, "counter", metrics.counter_delta()),
        (NVML_POWER, "power_integral", metrics.trapezoid_integral()),
    )
    for metric, method, aggregate in ways:
        series = window_series(device.filter(pl.col("metric") == metric), window)
        if series.height < 2:
            continue
        joules = series.select(aggregate).item()
        if joules is None or joules < 0:  # a counter reset: fall back to integrating power
            continue
        t_s = series.get_column("t_s")
        # t_s is a Float64 column with at least two rows here, so max/min are floats
        covered = cast(float, t_s.max()) - cast(float, t_s.min())
        return float(joules), method, float(covered)
    return None, None, 0.0


def _device_summary(device: pl.DataFrame, in_window: pl.DataFrame, window: metrics.Window) -> dict[str, Any]:
    lost = device.filter(pl.col("metric") == NVML_GPU_LOST).select(pl.col("t_s").min()).item()
    device = device.filter(pl.col("metric") != NVML_GPU_LOST)
    joules, method, covered = device_energy(device, window)
    uuid = device.select(pl.col("gpu_uuid").drop_nulls().first()).item() if device.height else None
    bus = device.select(pl.col("pci_bus_id").drop_nulls().first()).item() if device.height else None
    return {
        "gpu_uuid": uuid,  # the GPU's stable identity (telemetry version 2; null in older runs)
        "pci_bus_id": bus,
        "lost_at_s": lost,
        "samples": device.height,
        "gpu_util_pct": _stats(in_window, NVML_GPU_UTIL),
        "mem_util_pct": _stats(in_window, NVML_MEM_UTIL),
        "mem_used_high_water_bytes": device.select(metrics.telemetry_values(NVML_MEM_USED).max()).item(),
        "mem_total_bytes": device.select(metrics.telemetry_values(NVML_MEM_TOTAL).max()).item(),
        "power_w": _stats(in_window, NVML_POWER),
        "energy_j": joules,
        "energy_method": method,
        "energy_covered_s": covered,
    }


def gpu_summary(
    telemetry: Telemetry | None,
    final_rows: pl.LazyFrame,
    targets: Sequence[str],
    window: metrics.Window,
    target_configs: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The `gpu` block of a summary (keys in analysis/summary/run_summary.py's docstring)."""
    if telemetry is None:
        return {"status": "absent", "reason": "the run has no telemetry files (RUN_DIR/telemetry/*.parquet)"}
    nvml = telemetry.source(SOURCE_NVML)
    if nvml.height == 0:
        return {"status": "absent", "reason": "the run's telemetry has no NVML (GPU) samples"}
    in_window = nvml.filter(pl.col("t_s").is_between(window.start_s, window.end_s, closed="both"))
    devices = []
    for (host, device), samples in sorted(
        nvml.group_by("host", "device"), key=lambda item: (str(item[0][0]), str(item[0][1]))
    ):
        device_window = in_window.filter((pl.col("host") == host) & (pl.col("device") == device))
        devices.append({"host": host, "device": device, **_device_summary(samples, device_window, window)})
    served = served_targets(list(targets), target_configs)
    tokens = (
        final_rows.filter(pl.col("target").is_in(served))
        .select(metrics.output_tokens().filter(metrics.completed_in_window(window)).sum())
        .collect(engine="streaming")
        .item()
    )
    measured = [d for d in devices if d["energy_j"] is not None]
    joules = sum(d["energy_j"] for d in measured) if measured else None
    short = [d for d in devices if d["energy_covered_s"] < COVERED_SHARE * window.duration_s]
    withheld = None
    if not served:
        withheld = "no target of kind vllm ran: the GPUs' energy is not the cost of these targets' tokens"
    elif short:
        withheld = "; ".join(
            f"GPU {d['host']}:{d['device']} "
            + (f"lost at t={d['lost_at_s']:.1f} s, " if d["lost_at_s"] is not None else "")
            + f"measured over {d['energy_covered_s']:.1f} s of the {window.duration_s:.1f} s window"
            for d in short
        )
    methods = sorted({d["energy_method"] for d in measured})
    power_means = [d["power_w"]["mean"] for d in devices if d["power_w"]["mean"] is not None]
    high_water = [d["mem_used_high_water_bytes"] for d in devices if d["mem_used_high_water_bytes"] is not None]
    return {
        "status": "measured",
        "source": SOURCE_NVML,
        "definitions": DEFINITIONS,
        "devices_count": len(devices),
        "gpu_util_pct": _stats(in_window, NVML_GPU_UTIL),
        "mem_util_pct": _stats(in_window, NVML_MEM_UTIL),
        "mem_used_high_water_bytes": max(high_water) if high_water else None,
        "power_w": {
            "mean_per_gpu": sum(power_means) / len(power_means) if power_means else None,
            "mean_total": sum(power_means) if power_means else None,
        },
        "energy": {
            "joules": joules,
            "method": None if not methods else methods[0] if len(methods) == 1 else "mixed",
            "devices_measured": len(measured),
            "window_s": window.duration_s,
            "covered_s": min((d["energy_covered_s"] for d in measured), default=0.0),
            "targets": served,
            "output_tokens": tokens,
            "joules_per_output_token": joules / tokens if joules is not None and tokens and not withheld else None,
            "withheld": withheld,
        },
        "lost_devices": [f"{d['host']}:{d['device']}" for d in devices if d["lost_at_s"] is not None],
        "devices": devices,
    }
