"""A stand-in for pynvml: the same function names, return shapes, units and NVMLError codes over
fake GPUs with fixed readings, for the NVML sampler's tests (in-process and in Ray actors, where it
is named by an import spec)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

# pynvml's codes (nvml.h)
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15


class StandInNVMLError(Exception):
    """pynvml.NVMLError's shape: the NVML return code in `.value`."""

    def __init__(self, value: int):
        super().__init__(f"NVML error {value}")
        self.value = value


class StandInNvml:
    """What the sampler uses of pynvml, over `gpus` fake GPUs with fixed readings.

    `unsupported[(gpu, function)]` raises NOT_SUPPORTED; `failing[(gpu, function)] = n` raises
    GPU_IS_LOST the next n calls; `crashing` raises a non-NVML exception every call. Every call is
    counted in `calls`.
    """

    NVMLError = StandInNVMLError
    NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_LIBRARY_NOT_FOUND = NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus: int = 2, library: bool = True):
        self.gpus = gpus
        self.library = library
        self.unsupported: set[tuple[int, str]] = set()
        self.failing: Counter[tuple[int, str]] = Counter()
        self.crashing: set[tuple[int, str]] = set()
        self.calls: Counter[str] = Counter()
        self.inits = 0
        self.shutdowns = 0
        self.energy_mj = [5_000_000 + 4_000_000 * i for i in range(gpus)]

    def _call(self, handle: int, function: str) -> None:
        self.calls[function] += 1
        if (handle, function) in self.unsupported:
            raise StandInNVMLError(NVML_ERROR_NOT_SUPPORTED)
        if self.failing[(handle, function)] > 0:
            self.failing[(handle, function)] -= 1
            raise StandInNVMLError(NVML_ERROR_GPU_IS_LOST)
        if (handle, function) in self.crashing:
            raise RuntimeError("the driver answered garbage")

    def nvmlInit(self) -> None:
        if not self.library:
            raise StandInNVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-0000000{handle}"

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        self._call(handle, "nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=90 + handle, memory=40 + handle)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        self._call(handle, "nvmlDeviceGetMemoryInfo")
        total = 85_899_345_920
        return SimpleNamespace(total=total, used=60_000_000_000 + handle, free=total - 60_000_000_000 - handle)

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        self._call(handle, "nvmlDeviceGetPowerUsage")
        return 350_500 + handle  # milliwatts

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        self._call(handle, "nvmlDeviceGetTotalEnergyConsumption")
        self.energy_mj[handle] += 35_050  # 350.5 W over 0.1 s
        return self.energy_mj[handle]  # millijoules

    def nvmlDeviceGetClockInfo(self, handle: int, clock_type: int) -> int:
        self._call(handle, "nvmlDeviceGetClockInfo")
        assert clock_type == self.NVML_CLOCK_SM
        return 1980

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        self._call(handle, "nvmlDeviceGetTemperature")
        assert sensor == self.NVML_TEMPERATURE_GPU
        return 61 + handle
