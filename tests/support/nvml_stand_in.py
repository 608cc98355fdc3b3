"""A stand-in for pynvml: the same function names, return shapes, units and NVMLError codes over
fake GPUs with fixed readings, for the NVML sampler's tests (in-process and in Ray actors, where it
is named by an import spec)."""

from __future__ import annotations

import threading
from collections import Counter
from types import SimpleNamespace

# pynvml's codes (nvml.h)
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_DEPRECATED = 26
NVML_ERROR_UNKNOWN = 999
RESERVED_BYTES = 536_870_912  # what the driver reserves on each fake GPU (memory info version 2)


class StandInNVMLError(Exception):
    """pynvml.NVMLError's shape: the NVML return code in `.value`."""

    def __init__(self, value: int):
        super().__init__(f"NVML error {value}")
        self.value = value


class StandInNvml:
    """What the sampler uses of pynvml, over `gpus` fake GPUs with fixed readings.

    `unsupported[(gpu, function)]` raises NOT_SUPPORTED; `no_permission` NO_PERMISSION (a MIG parent's
    memory without privileges); `deprecated` (function names) DEPRECATED; `failing[(gpu, function)] = n`
    raises UNKNOWN (a transient error) the next n calls; `crashing` raises a non-NVML exception every
    call; `lose(gpu)` makes every later call on that GPU raise GPU_IS_LOST; `unopenable` GPUs' handles
    raise NO_PERMISSION; `hanging` calls block until `release` is set; `old_api`: an nvidia-ml-py
    without memory info version 2 or nvmlDeviceGetTemperatureV. Every call is counted in `calls`.
    """

    NVMLError = StandInNVMLError
    NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_NO_PERMISSION = NVML_ERROR_NO_PERMISSION
    NVML_ERROR_LIBRARY_NOT_FOUND = NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_FUNCTION_NOT_FOUND = NVML_ERROR_FUNCTION_NOT_FOUND
    NVML_ERROR_GPU_IS_LOST = NVML_ERROR_GPU_IS_LOST
    NVML_ERROR_RESET_REQUIRED = NVML_ERROR_RESET_REQUIRED
    NVML_ERROR_DEPRECATED = NVML_ERROR_DEPRECATED
    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0
    nvmlMemory_v2: object | None = 0x02000028  # pynvml's version constant (a struct size and version)
    NVML_FI_DEV_POWER_INSTANT: int | None = 186

    def __init__(self, gpus: int = 2, library: bool = True, old_api: bool = False):
        self.gpus = gpus
        self.library = library
        self.unsupported: set[tuple[int, str]] = set()
        self.no_permission: set[tuple[int, str]] = set()
        self.deprecated: set[str] = set()
        self.failing: Counter[tuple[int, str]] = Counter()
        self.crashing: set[tuple[int, str]] = set()
        self.lost: set[int] = set()
        self.unopenable: set[int] = set()
        self.hanging: set[tuple[int, str]] = set()
        self.release = threading.Event()
        self.shutdown_error: Exception | None = None
        if old_api:
            self.nvmlMemory_v2 = None
            self.nvmlDeviceGetTemperatureV = None  # type: ignore[assignment]
            self.NVML_FI_DEV_POWER_INSTANT = None
        self.calls: Counter[str] = Counter()
        self.inits = 0
        self.shutdowns = 0
        self.energy_mj = [5_000_000 + 4_000_000 * i for i in range(gpus)]

    def lose(self, gpu: int) -> None:
        self.lost.add(gpu)

    def _call(self, handle: int, function: str) -> None:
        self.calls[function] += 1
        if (handle, function) in self.hanging:
            self.release.wait()
        if handle in self.lost:
            raise StandInNVMLError(NVML_ERROR_GPU_IS_LOST)
        if (handle, function) in self.unsupported:
            raise StandInNVMLError(NVML_ERROR_NOT_SUPPORTED)
        if (handle, function) in self.no_permission:
            raise StandInNVMLError(NVML_ERROR_NO_PERMISSION)
        if function in self.deprecated:
            raise StandInNVMLError(NVML_ERROR_DEPRECATED)
        if self.failing[(handle, function)] > 0:
            self.failing[(handle, function)] -= 1
            raise StandInNVMLError(NVML_ERROR_UNKNOWN)
        if (handle, function) in self.crashing:
            raise RuntimeError("the driver answered garbage")

    def nvmlInit(self) -> None:
        if not self.library:
            raise StandInNVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1
        if self.shutdown_error is not None:
            raise self.shutdown_error

    def nvmlDeviceGetCount(self) -> int:
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index in self.unopenable:
            raise StandInNVMLError(NVML_ERROR_NO_PERMISSION)
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-0000000{handle}"

    def nvmlDeviceGetPciInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(busId=f"00000000:{0x18 + 0x10 * handle:02X}:00.0".encode())

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        self._call(handle, "nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=90 + handle, memory=40 + handle)

    def nvmlDeviceGetMemoryInfo(self, handle: int, version: object | None = None) -> SimpleNamespace:
        """Version 1 (no `version`): `used` includes the driver's reservation; version 2 apart, as `reserved`."""
        v2 = version is not None
        if v2 and version != self.nvmlMemory_v2:
            raise TypeError("nvmlDeviceGetMemoryInfo() got an unexpected keyword argument 'version'")
        self._call(handle, "nvmlDeviceGetMemoryInfo_v2" if v2 else "nvmlDeviceGetMemoryInfo")
        total, used = 85_899_345_920, 60_000_000_000 + handle
        if v2:
            return SimpleNamespace(total=total, reserved=RESERVED_BYTES, used=used, free=total - used - RESERVED_BYTES)
        return SimpleNamespace(total=total, used=used + RESERVED_BYTES, free=total - used - RESERVED_BYTES)

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        self._call(handle, "nvmlDeviceGetPowerUsage")
        return 350_500 + handle  # milliwatts

    def nvmlDeviceGetFieldValues(self, handle: int, field_ids: list[int]) -> list[SimpleNamespace]:
        """NVML_FI_DEV_POWER_INSTANT only: an unsigned int (valueType 1) of milliwatts, or a per-field error."""
        self._call(handle, "nvmlDeviceGetFieldValues")
        assert field_ids == [self.NVML_FI_DEV_POWER_INSTANT]
        status = NVML_ERROR_NOT_SUPPORTED if (handle, "power_instant") in self.unsupported else 0
        return [SimpleNamespace(nvmlReturn=status, valueType=1, value=SimpleNamespace(uiVal=412_250 + handle))]

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

    def nvmlDeviceGetTemperatureV(self, handle: int, sensor: int) -> int:
        self._call(handle, "nvmlDeviceGetTemperatureV")
        assert sensor == self.NVML_TEMPERATURE_GPU
        return 61 + handle
