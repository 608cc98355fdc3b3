"""GPU utilisation, memory, power and energy per output token, from a run's NVML telemetry.

Definitions (`DEFINITIONS` carries them into summary.json):
- Samples: NVML telemetry (source `nvml`), one series per (host, device) and metric.
- The serving GPUs: those the run's own vLLM servers were given (the manifest's `servers`: each one's
  host and CUDA_VISIBLE_DEVICES, by UUID, or by index: the launcher sets CUDA_DEVICE_ORDER=PCI_BUS_ID,
  so CUDA's index is NVML's); every GPU of a server's host where it was given none; every sampled GPU
  where the manifest names no server (`serving.how` says which). NVML sees every GPU of a host, so
  on an 8-GPU node serving with tensor parallelism 2 the six others are not the servers' cost.
- Utilisation (GPU, memory) and power: mean and p95 (analysis/metrics/table.py percentile) of the samples
  whose t_s is in the run's steady window; over the serving GPUs together, and per device. Total power
  = the sum of the serving GPUs' mean power. `all_sampled` gives the same over every GPU sampled.
- Memory high-water mark: the largest `mem_used_bytes` sample of the whole run (warm-up included).
- Energy in the window, per device: the total-energy counter (`energy_j`) at the window's end minus
  at its start, each read by linear interpolation between the neighbouring samples; when a device
  has no counter (or it went backwards), the trapezoid integral of `power_w` over the same
  interval. Where the samples do not reach a window edge, the interval stops at the last sample
  (`covered_s` says how much of the window was measured).
- Joules per output token = the serving GPUs' energy in the window / output tokens completed in the
  window (analysis/metrics/table.py) by the targets the GPUs served: targets of kind `vllm` in the
  manifest (started by the run on its GPU nodes). Withheld (null, with `withheld` saying why) when
  no such target ran (the GPUs' energy is not a hosted API's tokens' cost) or when a serving GPU's energy
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
    NVML_POWER_INSTANT,
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
RESOLUTION = {
    "gpu_util_pct": "the share of the driver's last sample period (1/6 s to 1 s, by GPU) in which a kernel ran: "
    "not SM occupancy; samples taken faster than that period repeat it",
    "mem_util_pct": "the share of the same period in which device memory was read or written",
    "power_w": "nvmlDeviceGetPowerUsage: on Ampere and newer a 1 s average, so 10 Hz samples repeat one value and its "
    "p95 is a p95 of 1 s averages",
    "power_instant_w": "NVML_FI_DEV_POWER_INSTANT: the draw at the sample (Hopper and newer; absent where not offered)",
    "energy_j": "the driver's energy counter: exact over the window whatever the sampling rate (the energy method)",
    "mem_used_bytes": "memory info version 2 at the sample, without the driver's reservation (mem_reserved_bytes)",
}
"""What each NVML figure resolves, as the driver provides it (summary.json `gpu.resolution`)."""
COVERED_SHARE = 0.99
"""A device's energy covers the window when it was measured over at least this share of it."""

EnergyMethod = Literal["counter", "power_integral"]


def served_targets(targets: Iterable[str], target_configs: dict[str, dict[str, Any]]) -> list[str]:
    """The targets whose tokens the GPUs produced: those of kind `vllm` in the manifest (none: none)."""
    return [name for name in sorted(targets) if (target_configs.get(name) or {}).get("kind") == "vllm"]


UUID_PREFIXES = ("GPU-", "MIG-")


def serving_devices(
    devices: Sequence[dict[str, Any]], servers: Sequence[dict[str, Any]], served: Sequence[str]
) -> tuple[list[dict[str, Any]], str]:
    """The devices the servers of the `served` targets ran on, and how that was found (module docstring)."""
    mine = [s for s in servers if s.get("target") in served]
    if not mine:
        return list(devices), "every sampled GPU (the manifest names no server of these targets)"
    chosen: list[dict[str, Any]] = []
    ways: set[str] = set()
    for server in mine:
        host = server.get("host")
        on_host = [d for d in devices if host is None or d["host"] == host]
        if not on_host:
            return list(devices), f"every sampled GPU (no GPU sampled on the servers' host {host})"
        visible = server.get("gpus")
        if visible is None:
            chosen += on_host
            ways.add("every GPU of the server's host (it was given no CUDA_VISIBLE_DEVICES)")
            continue
        by_index = False
        for entry in (e.strip() for e in str(visible).split(",") if e.strip()):
            if entry.startswith(UUID_PREFIXES):
                chosen += [d for d in on_host if d.get("gpu_uuid") == entry]
            else:
                chosen += [d for d in on_host if d["device"] == entry]
                by_index = True
        order = server.get("cuda_device_order", "PCI_BUS_ID")
        caveat = f" (by index under CUDA_DEVICE_ORDER={order}: CUDA's index may not be NVML's)"
        ways.add("CUDA_VISIBLE_DEVICES of the servers" + (caveat if by_index and order != "PCI_BUS_ID" else ""))
    unique = {(d["host"], d["device"]): d for d in chosen}
    if not unique:
        return list(devices), "every sampled GPU (the servers' CUDA_VISIBLE_DEVICES match no sampled GPU)"
    return sorted(unique.values(), key=lambda d: (str(d["host"]), str(d["device"]))), "; ".join(sorted(ways))


def _pooled(in_window: pl.DataFrame, devices: Sequence[dict[str, Any]], metric: str) -> dict[str, float | None]:
    keys = pl.DataFrame(
        {"host": [d["host"] for d in devices], "device": [d["device"] for d in devices]},
        schema={"host": pl.String, "device": pl.String},
    )
    return _stats(in_window.join(keys, on=["host", "device"], how="semi"), metric)


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
    servers: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The `gpu` block of a summary (keys in analysis/summary/run_summary.py's docstring); `servers`: the
    manifest's identities of the run's local servers."""
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
    serving, how = serving_devices(devices, servers, served)
    for d in devices:
        d["serving"] = any(d is s for s in serving)
    tokens = (
        final_rows.filter(pl.col("target").is_in(served))
        .select(metrics.output_tokens().filter(metrics.completed_in_window(window)).sum())
        .collect(engine="streaming")
        .item()
    )
    measured = [d for d in serving if d["energy_j"] is not None]
    joules = sum(d["energy_j"] for d in measured) if measured else None
    short = [d for d in serving if d["energy_covered_s"] < COVERED_SHARE * window.duration_s]
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
    power_means = [d["power_w"]["mean"] for d in serving if d["power_w"]["mean"] is not None]
    high_water = [d["mem_used_high_water_bytes"] for d in serving if d["mem_used_high_water_bytes"] is not None]
    every_power = [d["power_w"]["mean"] for d in devices if d["power_w"]["mean"] is not None]
    every_energy = [d["energy_j"] for d in devices if d["energy_j"] is not None]
    return {
        "status": "measured",
        "source": SOURCE_NVML,
        "definitions": DEFINITIONS,
        "serving": {"devices": [f"{d['host']}:{d['device']}" for d in serving], "how": how},
        "devices_count": len(serving),
        "resolution": RESOLUTION,
        "gpu_util_pct": _pooled(in_window, serving, NVML_GPU_UTIL),
        "mem_util_pct": _pooled(in_window, serving, NVML_MEM_UTIL),
        "power_instant_w": _pooled(in_window, serving, NVML_POWER_INSTANT),
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
        "all_sampled": {
            "devices_count": len(devices),
            "gpu_util_pct": _stats(in_window, NVML_GPU_UTIL),
            "power_w_mean_total": sum(every_power) if every_power else None,
            "energy_joules": sum(every_energy) if every_energy else None,
        },
        "lost_devices": [f"{d['host']}:{d['device']}" for d in devices if d["lost_at_s"] is not None],
        "devices": devices,
    }
