"""GPU telemetry through NVML (nvidia-ml-py, `import pynvml`): every GPU of this host at 10 Hz.

Each sample of each GPU gives the NVML_* metrics of replay/schemas/telemetry.py: GPU and memory
utilisation (percent), memory used, reserved and total (bytes: `nvmlDeviceGetMemoryInfo` version 2,
whose `used` leaves out the driver's reservation as nvidia-smi does; version 1, without `reserved`,
where the driver or nvidia-ml-py has no version 2), power (watts: `nvmlDeviceGetPowerUsage`, a 1 s average on Ampere
and newer, and the instantaneous draw `NVML_FI_DEV_POWER_INSTANT` where the GPU offers it), the total
energy counter (joules since the driver loaded), SM clock (MHz) and temperature (degrees C:
`nvmlDeviceGetTemperatureV`, the old `nvmlDeviceGetTemperature` where it is absent).

Faults, each confined to its GPU:
- A reading the GPU does not offer (NOT_SUPPORTED, NO_PERMISSION: a MIG parent's memory without
  privileges; FUNCTION_NOT_FOUND, DEPRECATED) moves to its older call where it has one (memory v1,
  the old temperature call) or is dropped for that GPU after the first try.
- A GPU that falls off the bus (GPU_IS_LOST, RESET_REQUIRED) is sampled no more: the moment is kept
  (`lost` in stats, and one `gpu_lost` row at that t_s, so the analysis sees where its series ends);
  the other GPUs go on.
- Any other error is counted and the reading tried again next time.
- Start-up is per GPU: one whose handle cannot be had (NO_PERMISSION, ...) is left out (`skipped`),
  the others sampled.
- `stop()` waits at most `stop_timeout_s` for the thread (a hung driver call), then writes what is
  buffered all the same and says so; nvmlShutdown's own failure is logged, never raised.
Nothing a GPU does stops the sampler.

With no nvidia-ml-py, no NVML library (no driver) or no GPU, `check_nvml()` says why in one line and
`NvmlSampler.start()` samples nothing: the caller says telemetry is off and why, and goes on.
The NVML module is a constructor argument (an object, or an import spec `module[:attribute]` that
the sampling process resolves, e.g. inside a Ray actor), so tests drive the sampler with a stand-in.
NVML ignores CUDA_VISIBLE_DEVICES: a sampler sees every GPU of its host, whatever its process was given.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from shadowreplay.replay.schemas.telemetry import (
    NVML_ENERGY,
    NVML_GPU_LOST,
    NVML_GPU_UTIL,
    NVML_MEM_RESERVED,
    NVML_MEM_TOTAL,
    NVML_MEM_USED,
    NVML_MEM_UTIL,
    NVML_POWER,
    NVML_POWER_INSTANT,
    NVML_SM_CLOCK,
    NVML_TEMPERATURE,
    SOURCE_NVML,
    TelemetryShardWriter,
)
from shadowreplay.replay.telemetry import RunClock

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 0.1  # 10 Hz
DEFAULT_NVML_MODULE = "pynvml"  # nvidia-ml-py
NOT_INSTALLED = "nvidia-ml-py is not installed (pip install nvidia-ml-py)"

STOP_TIMEOUT_S = 5.0
_CODES = {
    "NVML_ERROR_NOT_SUPPORTED": 3,
    "NVML_ERROR_NO_PERMISSION": 4,
    "NVML_ERROR_FUNCTION_NOT_FOUND": 13,
    "NVML_ERROR_GPU_IS_LOST": 15,
    "NVML_ERROR_RESET_REQUIRED": 16,
    "NVML_ERROR_DEPRECATED": 26,
}
"""NVML's return codes (nvml.h) by name, where the module lacks a name (its own value wins)."""
NOT_OFFERED = (
    "NVML_ERROR_NOT_SUPPORTED",
    "NVML_ERROR_NO_PERMISSION",
    "NVML_ERROR_FUNCTION_NOT_FOUND",
    "NVML_ERROR_DEPRECATED",
)
"""A reading the GPU does not offer: its older call, or dropped for that GPU."""
LOST = ("NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_RESET_REQUIRED")
"""The GPU fell off the bus: sampled no more."""

# One NVML call each; a reading gives one or more (metric, value) pairs in the schema's units.
Reading = Callable[[Any, Any], list[tuple[str, float]]]


def _codes(nvml: Any, names: Sequence[str]) -> frozenset[int]:
    return frozenset(int(getattr(nvml, name, _CODES[name])) for name in names)


def _utilisation(nvml: Any, handle: Any) -> list[tuple[str, float]]:
    rates = nvml.nvmlDeviceGetUtilizationRates(handle)
    return [(NVML_GPU_UTIL, float(rates.gpu)), (NVML_MEM_UTIL, float(rates.memory))]


def _memory(nvml: Any, handle: Any) -> list[tuple[str, float]]:
    """Version 2: `used` without the driver's reservation (as nvidia-smi shows it), `reserved` apart."""
    version = getattr(nvml, "nvmlMemory_v2", None)
    if version is None:
        raise AttributeError("nvidia-ml-py without nvmlMemory_v2")
    info = nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
    return [
        (NVML_MEM_USED, float(info.used)),
        (NVML_MEM_RESERVED, float(info.reserved)),
        (NVML_MEM_TOTAL, float(info.total)),
    ]


def _memory_v1(nvml: Any, handle: Any) -> list[tuple[str, float]]:
    info = nvml.nvmlDeviceGetMemoryInfo(handle)
    return [(NVML_MEM_USED, float(info.used)), (NVML_MEM_TOTAL, float(info.total))]


def _power(nvml: Any, handle: Any) -> list[tuple[str, float]]:
    return [(NVML_POWER, nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)]  # milliwatts


_FIELD_VALUES = ("dval", "uiVal", "ulVal", "ullVal", "sllVal", "siVal")  # nvmlValueType_t 0..5


def _power_instant(nvml: Any, handle: Any) -> list[tuple[str, float]]:
    """The instantaneous draw (a field value, Hopper and newer), beside power_w's driver average."""
    field_id = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", None)
    if field_id is None:
        raise AttributeError("nvidia-ml-py without NVML_FI_DEV_POWER_INSTANT")
    (value,) = nvml.nvmlDeviceGetFieldValues(handle, [field_id])
    if value.nvmlReturn != 0:
        raise nvml.NVMLError(value.nvmlReturn)
    return [(NVML_POWER_INSTANT, getattr(value.value, _FIELD_VALUES[value.valueType]) / 1000.0)]  # milliwatts


def _energy(nvml: Any, handle: Any) -> list[tuple[str, float]]:
    return [(NVML_ENERGY, nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0)]  # millijoules


def _sm_clock(nvml: Any, handle: Any) -> list[tuple[str, float]]:
    return [(NVML_SM_CLOCK, float(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)))]


def _temperature(nvml: Any, handle: Any) -> list[tuple[str, float]]:
    return [(NVML_TEMPERATURE, float(nvml.nvmlDeviceGetTemperatureV(handle, nvml.NVML_TEMPERATURE_GPU)))]


def _temperature_v0(nvml: Any, handle: Any) -> list[tuple[str, float]]:
    """The deprecated call (due to answer NVML_ERROR_DEPRECATED), where the driver has no other."""
    return [(NVML_TEMPERATURE, float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)))]


READINGS: dict[str, Reading] = {
    "utilisation": _utilisation,
    "memory": _memory,
    "power": _power,
    "power_instant": _power_instant,
    "energy": _energy,
    "sm_clock": _sm_clock,
    "temperature": _temperature,
}
OLDER_CALLS: dict[str, Reading] = {"memory": _memory_v1, "temperature": _temperature_v0}
"""Where the driver or nvidia-ml-py lacks a reading's current call, the call it falls back to."""


@dataclass(frozen=True)
class NvmlStatus:
    """Whether NVML can be sampled here; `reason` says why not, or what was found."""

    available: bool
    reason: str
    gpus: tuple[dict, ...] = ()  # {"index", "name", "uuid"} per GPU


def load_nvml(spec: str = DEFAULT_NVML_MODULE) -> ModuleType | Any:
    """The NVML module named by `spec`: `module` or `module:attribute` (an object with pynvml's
    functions, e.g. a test's stand-in). The default is nvidia-ml-py's pynvml. ImportError when the
    module cannot be imported or has no such attribute."""
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(module_name)
    if not attribute:
        return module
    try:
        return getattr(module, attribute)
    except AttributeError as exc:
        raise ImportError(f"{module_name} has no attribute {attribute!r}") from exc


def load_failure_reason(spec: str, exc: ImportError) -> str:
    """The one-line reason telemetry is off when `spec` cannot be loaded."""
    return NOT_INSTALLED if spec == DEFAULT_NVML_MODULE else f"cannot load the NVML module {spec}: {exc}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def pci_bus_id(nvml: Any, handle: Any) -> str | None:
    """The GPU's PCI bus id (`00000000:1A:00.0`), or None where NVML cannot say."""
    try:
        return _text(nvml.nvmlDeviceGetPciInfo(handle).busId)
    except Exception:  # an identity we lack is null in the rows, never a reason to stop
        return None


def check_nvml(nvml: Any | None = None) -> NvmlStatus:
    """Can this process sample NVML? One call to nvmlInit and nvmlShutdown; never raises for an
    NVML error. `nvml`: the module object, or an import spec for load_nvml (default pynvml)."""
    if nvml is None or isinstance(nvml, str):
        spec = nvml or DEFAULT_NVML_MODULE
        try:
            nvml = load_nvml(spec)
        except ImportError as exc:
            return NvmlStatus(False, load_failure_reason(spec, exc))
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        if getattr(exc, "value", None) == nvml.NVML_ERROR_LIBRARY_NOT_FOUND:
            return NvmlStatus(False, "no NVML library on this host (no NVIDIA driver)")
        return NvmlStatus(False, f"NVML did not start: {exc}")
    try:
        count = nvml.nvmlDeviceGetCount()
        if count == 0:
            return NvmlStatus(False, "NVML sees no GPU on this host")
        gpus: list[dict[str, Any]] = []
        unusable: list[str] = []
        for index in range(count):
            try:  # each GPU on its own: one that cannot be opened leaves the others sampled
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                gpus.append(
                    {
                        "index": index,
                        "name": _text(nvml.nvmlDeviceGetName(handle)),
                        "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
                        "pci_bus_id": pci_bus_id(nvml, handle),
                    }
                )
            except nvml.NVMLError as exc:
                unusable.append(f"GPU {index}: {exc}")
        if not gpus:
            return NvmlStatus(False, f"NVML cannot open any of the {count} GPU(s): {'; '.join(unusable)}")
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        names = ", ".join(sorted({g["name"] for g in gpus}))
        left_out = f"; left out {'; '.join(unusable)}" if unusable else ""
        return NvmlStatus(True, f"{len(gpus)} GPU(s) ({names}), driver {driver}{left_out}", tuple(gpus))
    except nvml.NVMLError as exc:
        return NvmlStatus(False, f"NVML cannot list the GPUs: {exc}")
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception as exc:  # the answer above stands; a driver in trouble says so in the log
            log.warning("nvmlShutdown failed: %s", exc)


@dataclass
class _Device:
    index: int
    label: str
    handle: Any
    readings: dict[str, Reading] = field(default_factory=dict)
    lost_at_s: float | None = None  # when it fell off the bus: sampled no more
    uuid: str | None = None  # its stable identity, on every row (NVML's index need not survive a reboot)
    pci_bus_id: str | None = None


class NvmlSampler:
    """Samples every GPU of this host (or `devices`) every `interval_s` on a thread of its own and
    writes long-form rows to `telemetry_dir`. Plain class: replay/telemetry/gpu_node_samplers.py
    wraps it in a Ray actor on every GPU node. Call start(clock), then stop() (flush() any time to
    write what is buffered). `nvml`: the NVML module object, or an import spec resolved at start()
    in this process (default: pynvml)."""

    def __init__(
        self,
        run_id: str,
        telemetry_dir: str | Path,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        devices: Sequence[int] | None = None,
        host: str | None = None,
        nvml: Any | str | None = None,
        max_rows: int = 50_000,
        max_age_s: float = 30.0,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ):
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.run_id = run_id
        self.telemetry_dir = Path(telemetry_dir)
        self.interval_s = interval_s
        self.host = host or socket.gethostname()
        self.wanted_devices = None if devices is None else tuple(devices)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._nvml: Any = nvml  # an import spec or None until start() resolves it to the module object
        self._devices: list[_Device] = []
        self._writer: TelemetryShardWriter | None = None
        self._clock: RunClock | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._round = threading.Lock()  # one sampling round at a time (the thread, or a direct call)
        self._initialised = False
        self._not_offered: frozenset[int] = frozenset()
        self._lost_codes: frozenset[int] = frozenset()
        self.status: NvmlStatus | None = None
        self.samples = 0  # sampling rounds (every GPU once)
        self.late_ticks = 0  # rounds skipped because a round overran its interval
        self.errors: Counter[str] = Counter()  # "GPU/reading: error" -> count
        self.unsupported: dict[str, list[str]] = {}  # GPU label -> readings it does not support
        self.older_calls: dict[str, list[str]] = {}  # GPU label -> readings read by their older call
        self.lost: dict[str, dict[str, Any]] = {}  # GPU label -> {"t_s", "error"}: it fell off the bus
        self.skipped: dict[str, str] = {}  # GPU index -> why it could not be opened
        self.stop_timeout_s = stop_timeout_s
        self.stop_timed_out = False
        self.thread_cpu_s = 0.0

    def start(self, clock: RunClock) -> NvmlStatus:
        """Open NVML and start sampling; with NVML unavailable, sample nothing and say why."""
        if self._thread is not None:
            raise RuntimeError("NvmlSampler already started")
        if self._nvml is None or isinstance(self._nvml, str):
            spec = self._nvml or DEFAULT_NVML_MODULE
            try:
                self._nvml = load_nvml(spec)
            except ImportError as exc:
                self.status = NvmlStatus(False, load_failure_reason(spec, exc))
                return self.status
        self.status = check_nvml(self._nvml)
        if not self.status.available:
            return self.status
        nvml = self._nvml
        nvml.nvmlInit()
        self._initialised = True
        identity = {g["index"]: (g["uuid"], g.get("pci_bus_id")) for g in self.status.gpus}
        indices = list(identity)
        if self.wanted_devices is not None:
            missing = sorted(set(self.wanted_devices) - set(indices))
            if missing:
                self._shutdown()
                self.status = NvmlStatus(False, f"GPU(s) {missing} not found (this host has {indices})")
                return self.status
            indices = [i for i in indices if i in self.wanted_devices]
        self._devices = []
        for index in indices:
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            except nvml.NVMLError as exc:  # this GPU only
                self.skipped[str(index)] = str(exc)
                continue
            uuid, bus = identity[index]
            self._devices.append(_Device(index, str(index), handle, dict(READINGS), uuid=uuid, pci_bus_id=bus))
        if not self._devices:
            self._shutdown()
            self.status = NvmlStatus(False, f"no GPU could be opened: {self.skipped}", self.status.gpus)
            return self.status
        self._not_offered = _codes(nvml, NOT_OFFERED)
        self._lost_codes = _codes(nvml, LOST)
        self._writer = TelemetryShardWriter(
            self.telemetry_dir,
            self.run_id,
            self.host,
            f"{SOURCE_NVML}-{self.host}-{os.getpid()}",
            self.max_rows,
            self.max_age_s,
        )
        self._clock = clock
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self.status

    def sample_once(self) -> int:
        """Read every GPU once and queue the rows; returns the rows queued. The thread calls this."""
        assert self._writer is not None and self._clock is not None, "start() first"
        with self._round:
            return self._sample_round()

    def _sample_round(self) -> int:
        assert self._writer is not None and self._clock is not None
        rows = 0
        for device in self._devices:
            if device.lost_at_s is not None:
                continue
            t_s = self._clock.to_run_s(time.perf_counter())
            for name, reading in list(device.readings.items()):
                rows += self._read(device, name, reading, t_s)
                if device.lost_at_s is not None:
                    break
        self.samples += 1
        return rows

    def _read(self, device: _Device, name: str, reading: Reading, t_s: float) -> int:
        """One reading of one GPU into rows (the module docstring's faults); returns the rows queued."""
        assert self._writer is not None
        nvml = self._nvml
        try:
            values = reading(nvml, device.handle)
        except Exception as exc:  # NVMLError mostly; nothing one reading does stops the others
            code = getattr(exc, "value", None) if isinstance(exc, nvml.NVMLError) else None
            if code in self._lost_codes:
                self._lose(device, t_s, f"{name}: {exc}")
                return 1
            older = OLDER_CALLS.get(name)
            missing = isinstance(exc, AttributeError)  # the library lacks the call or its constant
            not_offered = code in self._not_offered or missing
            if (not_offered or isinstance(exc, TypeError)) and older is not None and reading is not older:
                device.readings[name] = older
                self.older_calls.setdefault(device.label, []).append(name)
                log.info("GPU %s: %s read by its older call (%s)", device.label, name, exc)
                return self._read(device, name, older, t_s)  # now: no gap in the series
            if not_offered:
                del device.readings[name]
                self.unsupported.setdefault(device.label, []).append(name)
                log.info("GPU %s does not offer %s (%s); not sampled", device.label, name, exc)
            else:
                self.errors[f"GPU {device.label}/{name}: {exc}"] += 1
            return 0
        for metric, value in values:
            self._writer.add(SOURCE_NVML, device.label, t_s, metric, value, device.uuid, device.pci_bus_id)
        return len(values)

    def _lose(self, device: _Device, t_s: float, error: str) -> None:
        """The GPU fell off the bus at `t_s`: one `gpu_lost` row, and it is sampled no more."""
        assert self._writer is not None
        device.lost_at_s = t_s
        self.lost[device.label] = {"t_s": t_s, "error": error}
        self._writer.add(SOURCE_NVML, device.label, t_s, NVML_GPU_LOST, 1.0, device.uuid, device.pci_bus_id)
        log.warning("GPU %s lost at t=%.1f s (%s); the other GPUs are still sampled", device.label, t_s, error)

    def _run(self) -> None:
        assert self._writer is not None
        next_tick = time.perf_counter()
        while not self._stop.is_set():
            try:
                self.sample_once()
                self._writer.flush_if_due()
            except Exception as exc:  # a full disk or a broken driver must not end the run
                self.errors[f"sampler: {type(exc).__name__}: {exc}"] += 1
            next_tick += self.interval_s
            now = time.perf_counter()
            if next_tick < now:  # overran: skip the missed ticks instead of bursting to catch up
                missed = int((now - next_tick) / self.interval_s) + 1
                self.late_ticks += missed
                next_tick += missed * self.interval_s
            self._stop.wait(next_tick - now)
        self.thread_cpu_s = time.thread_time()

    def flush(self) -> int:
        """Write the buffered rows now; returns the rows written."""
        return self._writer.flush() if self._writer is not None else 0

    def stop(self) -> dict:
        """Stop sampling (waiting at most stop_timeout_s for the thread), write what is buffered, close
        NVML (not while the thread is still inside a call); returns stats()."""
        hung = False
        if self._thread is not None:
            self._stop.set()
            self._thread.join(self.stop_timeout_s)
            hung = self._thread.is_alive()
            if hung:
                self.stop_timed_out = True
                self.errors[
                    f"sampler: the thread did not stop within {self.stop_timeout_s:g} s (a hung NVML call)"
                ] += 1
                log.warning("the NVML sampler's thread is stuck in a driver call; its rows so far are written")
            else:
                self._thread = None
        try:
            self.flush()
        finally:
            if not hung:
                self._shutdown()
        return self.stats()

    def _shutdown(self) -> None:
        if self._initialised:
            self._initialised = False
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:  # a driver in trouble: the rows are what matters, and they are written
                log.warning("nvmlShutdown failed: %s", exc)

    def stats(self) -> dict:
        """What the sampler did: for the manifest and the CPU-cost benchmark."""
        return {
            "source": SOURCE_NVML,
            "host": self.host,
            "available": bool(self.status and self.status.available),
            "reason": self.status.reason if self.status else "not started",
            "gpus": list(self.status.gpus) if self.status else [],
            "interval_s": self.interval_s,
            "samples": self.samples,
            "late_ticks": self.late_ticks,
            "rows_written": self._writer.rows_written if self._writer else 0,
            "files": [str(p) for p in self._writer.files] if self._writer else [],
            "unsupported": {k: list(v) for k, v in self.unsupported.items()},
            "older_calls": {k: list(v) for k, v in self.older_calls.items()},
            "lost": {k: dict(v) for k, v in self.lost.items()},
            "skipped": dict(self.skipped),
            "stop_timed_out": self.stop_timed_out,
            "errors": dict(self.errors),
            "thread_cpu_s": self.thread_cpu_s,
        }
