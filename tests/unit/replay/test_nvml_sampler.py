"""The NVML sampler, driven by a stand-in for pynvml (same function names, return shapes, units and
NVMLError codes), and on a real GPU where one is present (`gpu` marker)."""

from __future__ import annotations

import time

import pyarrow.parquet as pq
import pytest

import shadowreplay.replay.telemetry.nvml_sampler as nvml_sampler
from shadowreplay.replay.clock import ClockMapping
from shadowreplay.replay.schemas.telemetry import TELEMETRY_SCHEMA
from shadowreplay.replay.telemetry.nvml_sampler import NvmlSampler, check_nvml
from tests.support.nvml_stand_in import (
    RESERVED_BYTES,
    StandInNvml,
    StandInNVMLError,
)


def clock() -> ClockMapping:
    """The replay workers' own perf_counter -> run-seconds mapping, with the run starting now."""
    return ClockMapping(ClockMapping.measure_wall_minus_perf(), time.time())


def read_rows(files) -> list[dict]:
    return pq.ParquetDataset(files).read().to_pylist() if files else []


def by_metric(rows: list[dict], device: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for row in rows:
        if row["device"] == device:
            out.setdefault(row["metric"], []).append(row["value"])
    return out


def test_one_round_gives_every_metric_of_every_gpu_in_schema_units(tmp_path):
    nvml = StandInNvml(gpus=2)
    sampler = NvmlSampler("run-7", tmp_path, nvml=nvml, host="gpu-node-1", interval_s=3600)
    status = sampler.start(clock())
    assert status.available and "2 GPU(s) (NVIDIA H100 80GB HBM3), driver 550.54.15" == status.reason
    assert sampler.sample_once() == 20  # 10 metrics x 2 GPUs, beside the thread's own first round
    stats = sampler.stop()
    assert nvml.inits == nvml.shutdowns  # every nvmlInit has its nvmlShutdown
    files = stats["files"]
    assert pq.read_schema(files[0]).equals(TELEMETRY_SCHEMA, check_metadata=True)
    rows = read_rows(files)
    assert {(r["run_id"], r["source"], r["host"]) for r in rows} == {("run-7", "nvml", "gpu-node-1")}
    samples = stats["samples"]  # ours, and the thread's first round if it got to it before stop()
    assert samples in (1, 2) and len(rows) == 20 * samples
    gpu1 = by_metric(rows, "1")
    assert gpu1["gpu_util_pct"] == [91.0] * samples and gpu1["mem_util_pct"] == [41.0] * samples
    assert gpu1["mem_used_bytes"][0] == 60_000_000_001 and gpu1["mem_total_bytes"][0] == 85_899_345_920
    assert gpu1["mem_reserved_bytes"][0] == RESERVED_BYTES  # version 2: the driver's reservation apart
    assert gpu1["power_w"][0] == pytest.approx(350.501)  # the driver's average
    assert gpu1["power_instant_w"][0] == pytest.approx(412.251)  # NVML_FI_DEV_POWER_INSTANT
    assert gpu1["energy_j"] == pytest.approx([9_000 + 35.05 * (i + 1) for i in range(samples)])  # mJ -> J
    assert gpu1["sm_clock_mhz"][0] == 1980 and gpu1["temperature_c"][0] == 62
    t = [r["t_s"] for r in rows]
    assert all(-1 < x < 60 for x in t)  # seconds on the run's timeline, which started just now
    assert [g["uuid"] for g in stats["gpus"]] == ["GPU-00000000", "GPU-00000001"]
    # every row names its GPU by its stable identity too (NVML's index need not survive a reboot)
    identities = {(r["device"], r["gpu_uuid"], r["pci_bus_id"]) for r in rows}
    assert identities == {("0", "GPU-00000000", "00000000:18:00.0"), ("1", "GPU-00000001", "00000000:28:00.0")}


def test_an_unsupported_reading_is_dropped_for_that_gpu_only(tmp_path):
    nvml = StandInNvml(gpus=2)
    nvml.unsupported.add((1, "nvmlDeviceGetTotalEnergyConsumption"))  # e.g. a pre-Volta GPU
    sampler = NvmlSampler("r", tmp_path, nvml=nvml, interval_s=3600)
    sampler.start(clock())
    for _ in range(3):
        sampler.sample_once()
    stats = sampler.stop()
    assert stats["unsupported"] == {"1": ["energy"]} and stats["errors"] == {}
    # GPU 0 read its energy every round, GPU 1 only once (the try that said NOT_SUPPORTED).
    assert nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == stats["samples"] + 1
    rows = read_rows(stats["files"])
    assert "energy_j" not in by_metric(rows, "1") and len(by_metric(rows, "0")["energy_j"]) == stats["samples"]
    assert len(by_metric(rows, "1")["power_w"]) == stats["samples"]


def test_other_nvml_errors_are_counted_and_the_reading_tried_again(tmp_path):
    nvml = StandInNvml(gpus=1)
    nvml.failing[(0, "nvmlDeviceGetPowerUsage")] = 2
    nvml.crashing.add((0, "nvmlDeviceGetTemperatureV"))
    sampler = NvmlSampler("r", tmp_path, nvml=nvml, interval_s=3600)
    sampler.start(clock())
    for _ in range(3):
        sampler.sample_once()
    stats = sampler.stop()
    assert stats["errors"] == {
        "GPU 0/power: NVML error 999": 2,
        "GPU 0/temperature: the driver answered garbage": stats["samples"],
    }
    assert stats["unsupported"] == {}
    power = by_metric(read_rows(stats["files"]), "0")["power_w"]
    assert len(power) == stats["samples"] - 2 >= 1
    assert len(by_metric(read_rows(stats["files"]), "0")["gpu_util_pct"]) == stats["samples"]


def test_the_thread_samples_until_stopped_and_writes_everything(tmp_path):
    nvml = StandInNvml(gpus=2)
    sampler = NvmlSampler("r", tmp_path, nvml=nvml, interval_s=0.01, max_rows=50)
    sampler.start(clock())
    deadline = time.monotonic() + 30
    while sampler.samples < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = sampler.stop()
    samples = stats["samples"]
    assert samples >= 10 and stats["rows_written"] == samples * 20
    assert len(stats["files"]) >= 3  # shards of at most 50 rows
    rows = read_rows(stats["files"])
    assert len(rows) == samples * 20
    for device in ("0", "1"):
        times = [r["t_s"] for r in rows if r["device"] == device and r["metric"] == "power_w"]
        assert times == sorted(times) and len(set(times)) == samples
    assert nvml.inits == nvml.shutdowns
    assert stats["thread_cpu_s"] > 0
    assert sampler.samples == samples  # nothing samples after stop()


def test_a_chosen_subset_of_gpus(tmp_path):
    sampler = NvmlSampler("r", tmp_path, nvml=StandInNvml(gpus=4), devices=[2], interval_s=3600)
    sampler.start(clock())
    stats = sampler.stop()
    assert {r["device"] for r in read_rows(stats["files"])} == {"2"}
    missing = NvmlSampler("r", tmp_path, nvml=StandInNvml(gpus=2), devices=[5])
    status = missing.start(clock())
    assert not status.available and status.reason == "GPU(s) [5] not found (this host has [0, 1])"


@pytest.mark.parametrize(
    ("nvml", "reason"),
    [
        (StandInNvml(library=False), "no NVML library on this host (no NVIDIA driver)"),
        (StandInNvml(gpus=0), "NVML sees no GPU on this host"),
    ],
)
def test_without_a_driver_or_a_gpu_it_says_why_and_samples_nothing(tmp_path, nvml, reason):
    assert check_nvml(nvml).reason == reason
    sampler = NvmlSampler("r", tmp_path / "telemetry", nvml=nvml)
    status = sampler.start(clock())
    assert not status.available and status.reason == reason
    stats = sampler.stop()
    assert stats["available"] is False and stats["samples"] == 0 and stats["files"] == []
    assert not (tmp_path / "telemetry").exists()
    assert nvml.inits == nvml.shutdowns


def test_without_nvidia_ml_py_it_says_how_to_get_it(tmp_path, monkeypatch):
    def no_pynvml(spec: str = "pynvml"):
        raise ImportError(f"No module named {spec!r}")

    monkeypatch.setattr(nvml_sampler, "load_nvml", no_pynvml)
    assert check_nvml().reason == "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    status = NvmlSampler("r", tmp_path).start(clock())
    assert not status.available and "nvidia-ml-py" in status.reason


def test_real_pynvml_on_a_host_without_a_driver_says_so():
    status = check_nvml()  # the real nvidia-ml-py
    if status.available:
        pytest.skip(f"this host has a GPU ({status.reason}); test_real_gpu covers it")
    assert status.reason in ("no NVML library on this host (no NVIDIA driver)", "NVML sees no GPU on this host")


@pytest.mark.gpu
def test_real_gpu(tmp_path):
    status = check_nvml()
    if not status.available:
        pytest.skip(f"no GPU here: {status.reason}")
    sampler = NvmlSampler("gpu-run", tmp_path, interval_s=0.1)
    assert sampler.start(clock()).available
    time.sleep(2.0)
    stats = sampler.stop()
    rows = read_rows(stats["files"])
    print(
        f"\nNVML on this host: {status.reason}; {stats['samples']} rounds in 2 s, "
        f"unsupported {stats['unsupported']}, errors {stats['errors']}, thread CPU {stats['thread_cpu_s']:.4f} s"
    )
    assert stats["samples"] >= 10 and not stats["errors"]
    for gpu in status.gpus:
        metrics = by_metric(rows, str(gpu["index"]))
        print(f"GPU {gpu['index']} {gpu['name']}: " + ", ".join(f"{m}={v[-1]:g}" for m, v in sorted(metrics.items())))
        assert 0 < metrics["mem_total_bytes"][0] and 0 <= metrics["mem_used_bytes"][-1] <= metrics["mem_total_bytes"][0]
        assert 0 <= metrics["gpu_util_pct"][-1] <= 100
        assert 0 < metrics["power_w"][-1] < 2000
        assert 0 < metrics["sm_clock_mhz"][-1] < 5000 and 0 < metrics["temperature_c"][-1] < 120
        if "energy_j" in metrics:
            assert metrics["energy_j"][-1] >= metrics["energy_j"][0]


ONE_GPU = StandInNvml(gpus=1)  # named by an import spec below


def test_the_nvml_module_can_be_named_by_an_import_spec(tmp_path):
    spec = f"{__name__}:ONE_GPU"
    assert nvml_sampler.load_nvml(spec) is ONE_GPU
    assert nvml_sampler.load_nvml("pynvml").__name__ == "pynvml"
    sampler = NvmlSampler("r", tmp_path, nvml=spec, interval_s=3600)
    status = sampler.start(clock())
    assert status.available and [g["uuid"] for g in status.gpus] == ["GPU-00000000"]
    assert {r["device"] for r in read_rows(sampler.stop()["files"])} == {"0"}
    for bad in ("tests.no_such_nvml_module", f"{__name__}:NO_SUCH_ATTRIBUTE"):
        status = NvmlSampler("r", tmp_path / bad, nvml=bad).start(clock())
        assert not status.available and status.reason.startswith(f"cannot load the NVML module {bad}: ")
        assert check_nvml(bad).reason == status.reason


def test_a_lost_gpu_is_sampled_no_more_the_moment_kept_the_others_go_on(tmp_path):
    nvml = StandInNvml(gpus=3)
    sampler = NvmlSampler("r", tmp_path, nvml=nvml, interval_s=3600)
    sampler.start(clock())
    sampler.sample_once()
    nvml.lose(1)  # GPU 1 falls off the bus
    sampler.sample_once()
    calls_after_loss = dict(nvml.calls)
    for _ in range(3):
        sampler.sample_once()
    stats = sampler.stop()
    assert list(stats["lost"]) == ["1"] and "NVML error 15" in stats["lost"]["1"]["error"]
    assert stats["errors"] == {}  # not retried for ever: one loss, no error count
    # after the loss GPU 1 is called no more: each function's calls grew by the two live GPUs only
    assert nvml.calls["nvmlDeviceGetPowerUsage"] - calls_after_loss["nvmlDeviceGetPowerUsage"] == 2 * 3
    rows = read_rows(stats["files"])
    lost = [r for r in rows if r["metric"] == "gpu_lost"]
    assert [(r["device"], r["value"]) for r in lost] == [("1", 1.0)] and lost[0]["t_s"] == stats["lost"]["1"]["t_s"]
    gpu1 = [r for r in rows if r["device"] == "1" and r["metric"] != "gpu_lost"]
    assert max(r["t_s"] for r in gpu1) < lost[0]["t_s"]  # its series ends where it was lost
    assert len(by_metric(rows, "0")["power_w"]) == len(by_metric(rows, "2")["power_w"]) == stats["samples"]


def test_a_mig_parent_without_privileges_drops_memory_once_and_keeps_the_rest(tmp_path):
    nvml = StandInNvml(gpus=2)
    for function in ("nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetMemoryInfo"):
        nvml.no_permission.add((0, function))
    sampler = NvmlSampler("r", tmp_path, nvml=nvml, interval_s=3600)
    sampler.start(clock())
    for _ in range(5):
        sampler.sample_once()
    stats = sampler.stop()
    assert stats["unsupported"] == {"0": ["memory"]} and stats["older_calls"] == {"0": ["memory"]}
    assert stats["errors"] == {}  # NO_PERMISSION is not an error counted ten times a second
    assert nvml.calls["nvmlDeviceGetMemoryInfo_v2"] == stats["samples"] + 1  # GPU 1 each round, GPU 0 once
    rows = read_rows(stats["files"])
    assert "mem_used_bytes" not in by_metric(rows, "0") and len(by_metric(rows, "0")["power_w"]) == stats["samples"]
    assert len(by_metric(rows, "1")["mem_used_bytes"]) == stats["samples"]


def test_current_calls_with_the_older_ones_where_the_library_lacks_them(tmp_path):
    old = StandInNvml(gpus=1, old_api=True)  # an nvidia-ml-py before memory v2 and TemperatureV
    old.deprecated.add("nvmlDeviceGetTemperature")  # and a driver that retired the old call
    sampler = NvmlSampler("r", tmp_path / "old", nvml=old, interval_s=3600)
    sampler.start(clock())
    for _ in range(3):
        sampler.sample_once()
    stats = sampler.stop()
    assert stats["older_calls"] == {"0": ["memory", "temperature"]}
    assert stats["unsupported"] == {"0": ["power_instant", "temperature"]}  # absent, DEPRECATED: said once
    assert stats["errors"] == {}
    rows = by_metric(read_rows(stats["files"]), "0")
    assert rows["mem_used_bytes"][-1] == 60_000_000_000 + RESERVED_BYTES  # v1's used holds the reservation
    assert "mem_reserved_bytes" not in rows and "temperature_c" not in rows
    current = StandInNvml(gpus=1)
    current.deprecated.add("nvmlDeviceGetTemperature")
    sampler = NvmlSampler("r", tmp_path / "new", nvml=current, interval_s=3600)
    sampler.start(clock())
    sampler.sample_once()
    stats = sampler.stop()
    assert stats["older_calls"] == {} and current.calls["nvmlDeviceGetTemperature"] == 0
    rows = by_metric(read_rows(stats["files"]), "0")
    assert rows["mem_used_bytes"][0] == 60_000_000_000 and rows["temperature_c"][0] == 61


def test_one_gpu_that_cannot_be_opened_leaves_the_others_sampled(tmp_path):
    nvml = StandInNvml(gpus=3)
    nvml.unopenable.add(1)
    assert check_nvml(nvml).available and "left out GPU 1: NVML error 4" in check_nvml(nvml).reason
    sampler = NvmlSampler("r", tmp_path, nvml=nvml, interval_s=3600)
    status = sampler.start(clock())
    assert status.available and [g["index"] for g in status.gpus] == [0, 2]
    sampler.sample_once()
    stats = sampler.stop()
    assert sorted({r["device"] for r in read_rows(stats["files"])}) == ["0", "2"]
    nvml.unopenable.update({0, 2})
    status = NvmlSampler("r", tmp_path / "none", nvml=nvml).start(clock())
    assert not status.available and "cannot open any of the 3 GPU(s)" in status.reason


def test_stop_is_bounded_by_a_hung_driver_and_still_writes_the_rows(tmp_path):
    nvml = StandInNvml(gpus=1)
    sampler = NvmlSampler("r", tmp_path, nvml=nvml, interval_s=0.01, stop_timeout_s=0.5)
    sampler.start(clock())
    time.sleep(0.1)
    nvml.hanging.add((0, "nvmlDeviceGetPowerUsage"))  # the next round blocks inside the driver
    time.sleep(0.1)
    started = time.monotonic()
    stats = sampler.stop()
    assert time.monotonic() - started < 5.0 and stats["stop_timed_out"]
    assert any("did not stop within 0.5 s" in error for error in stats["errors"])
    assert len(read_rows(stats["files"])) > 0  # the rows sampled before the hang are on disk
    assert nvml.shutdowns == nvml.inits - 1  # not shut down under a thread still inside a call
    nvml.release.set()


def test_a_failing_shutdown_is_logged_not_raised(tmp_path):
    nvml = StandInNvml(gpus=1)
    nvml.shutdown_error = StandInNVMLError(999)
    sampler = NvmlSampler("r", tmp_path, nvml=nvml, interval_s=3600)
    sampler.start(clock())
    sampler.sample_once()
    assert sampler.stop()["rows_written"] > 0
    nvml.shutdown_error = RuntimeError("driver gone")
    sampler = NvmlSampler("r", tmp_path / "b", nvml=nvml, interval_s=3600)
    sampler.start(clock())
    assert sampler.stop()["available"]
