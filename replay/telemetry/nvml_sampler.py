"""GPU telemetry through NVML (nvidia-ml-py, `import pynvml`): every GPU of this host at 10 Hz.

Each sample of each GPU gives the NVML_* metrics of replay/schemas/telemetry.py: GPU and memory
utilisation (percent), memory used and total (bytes), power (watts), the total energy counter
(joules since the driver loaded), SM clock (MHz) and temperature (degrees C). A reading the GPU
does not support (NVML_ERROR_NOT_SUPPORTED) is dropped for that GPU after the first try; any other
NVML error is counted and the reading is tried again next time. Nothing a GPU does stops the sampler.

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
    NVML_GPU_UTIL,
    NVML_MEM_TOTAL,
    NVML_MEM_USED,
    NVML_MEM_UTIL,
    NVML_POWER,
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

# One NVML call each; a reading gives one or more (metric, value) pairs in the schema's units.
Reading = Callable[[Any, Any], list[tuple[str, float]]]


def _utilisation(nvml: Any, handle: Any) -> list[tuple[str, float]]:
    rates = nvml.nvmlDeviceGetUtilizationRates(handle)
    return [(NVML_GPU_UTIL, float(rates.gpu)), (NVML_MEM_UTIL, float(rates.memory))]


def _memory(nvml: Any, handle: Any) -> list[tuple[str, float]]:
    info = nvml.nvmlDeviceGetMemoryInfo(handle)
    return [(NVML_MEM_USED, float(info.used)), (NVML_MEM_TOTAL, float(info.total))]


def _power(nvml: Any, handle: Any) -> list[tuple[str, float]]:
    return [(NVML_POWER, nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)]  # milliwatts


def _energy(nvml: Any, handle: Any) -> list[tuple[str, float]]:
    return [(NVML_ENERGY, nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0)]  # millijoules


def _sm_clock(nvml: Any, handle: Any) -> list[tuple[str, float]]:
    return [(NVML_SM_CLOCK, float(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)))]


def _temperature(nvml: Any, handle: Any) -> list[tuple[str, float]]:
    return [(NVML_TEMPERATURE, float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)))]


READINGS: dict[str, Reading] = {
    "utilisation": _utilisation,
    "memory": _memory,
    "power": _power,
    "energy": _energy,
    "sm_clock": _sm_clock,
    "temperature": _temperature,
}


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
        for index in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(
                {
                    "index": index,
                    "name": _text(nvml.nvmlDeviceGetName(handle)),
                    "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
                }
            )
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        names = ", ".join(sorted({g["name"] for g in gpus}))
        return NvmlStatus(True, f"{count} GPU(s) ({names}), driver {driver}", tuple(gpus))
    except nvml.NVMLError as exc:
        return NvmlStatus(False, f"NVML cannot list the GPUs: {exc}")
    finally:
        nvml.nvmlShutdown()


@dataclass
class _Device:
    index: int
    label: str
    handle: Any
    readings: dict[str, Reading] = field(default_factory=dict)


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
        self.status: NvmlStatus | None = None
        self.samples = 0  # sampling rounds (every GPU once)
        self.late_ticks = 0  # rounds skipped because a round overran its interval
        self.errors: Counter[str] = Counter()  # "GPU/reading: error" -> count
        self.unsupported: dict[str, list[str]] = {}  # GPU label -> readings it does not support
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
        indices = [g["index"] for g in self.status.gpus]
        if self.wanted_devices is not None:
            missing = sorted(set(self.wanted_devices) - set(indices))
            if missing:
                self._shutdown()
                self.status = NvmlStatus(False, f"GPU(s) {missing} not found (this host has {indices})")
                return self.status
            indices = [i for i in indices if i in self.wanted_devices]
        self._devices = [_Device(i, str(i), nvml.nvmlDeviceGetHandleByIndex(i), dict(READINGS)) for i in indices]
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
        nvml, rows = self._nvml, 0
        for device in self._devices:
            t_s = self._clock.to_run_s(time.perf_counter())
            for name, reading in list(device.readings.items()):
                try:
                    values = reading(nvml, device.handle)
                except Exception as exc:  # NVMLError mostly; nothing one reading does stops the others
                    if isinstance(exc, nvml.NVMLError) and getattr(exc, "value", None) == nvml.NVML_ERROR_NOT_SUPPORTED:
                        del device.readings[name]
                        self.unsupported.setdefault(device.label, []).append(name)
                        log.info("GPU %s does not support %s; not sampled", device.label, name)
                    else:
                        self.errors[f"GPU {device.label}/{name}: {exc}"] += 1
                    continue
                for metric, value in values:
                    self._writer.add(SOURCE_NVML, device.label, t_s, metric, value)
                    rows += 1
        self.samples += 1
        return rows

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
        """Stop sampling, write what is buffered, close NVML; returns stats()."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.flush()
        self._shutdown()
        return self.stats()

    def _shutdown(self) -> None:
        if self._initialised:
            self._initialised = False
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as exc:
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
            "errors": dict(self.errors),
            "thread_cpu_s": self.thread_cpu_s,
        }
