"""GPU utilisation, memory, power and joules per output token from telemetry files the test writes;
every aggregate is recomputed here with numpy from the same samples."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from shadowreplay.analysis.data.run_data import load_run
from shadowreplay.analysis.data.telemetry_data import TelemetryDataError, load_telemetry
from shadowreplay.analysis.metrics import table as metrics
from shadowreplay.analysis.summary.run_summary import summarize
from shadowreplay.analysis.telemetry.energy import device_energy
from shadowreplay.cli import main
from shadowreplay.replay.schemas.telemetry import (
    NVML_ENERGY,
    NVML_GPU_LOST,
    NVML_POWER,
    NVML_POWER_INSTANT,
    TELEMETRY_SCHEMA,
    TelemetryShardWriter,
)
from tests.support.results_factory import result_row, write_results
from tests.support.telemetry_factory import gpu_samples, sample, server_samples, write_telemetry

WINDOW = (1.0, 10.0)  # schedule 0..10 s, 10% warm-up
MANIFEST = {
    "run_id": "run-factory",
    "targets": [
        {"name": "local", "kind": "vllm", "model": "tiny"},
        {"name": "hosted", "kind": "openai", "model": "m", "base_url": "https://api.example.test/v1"},
    ],
}


@pytest.fixture
def rows() -> list[dict]:
    rows = []
    for i in range(21):
        rows.append(result_row(f"r{i}", target="local", scheduled_s=i * 0.5, gaps_ms=[4.0] * (i % 6 + 1)))
        rows.append(result_row(f"r{i}", target="hosted", scheduled_s=i * 0.5, gaps_ms=[9.0] * 30))
    return rows


def _times(rng: np.random.Generator, start: float, stop: float, step: float) -> np.ndarray:
    base = np.arange(start, stop, step)
    return np.sort(base + rng.uniform(-0.3, 0.3, base.size) * step)


@pytest.fixture
def gpus() -> dict[str, dict[str, np.ndarray]]:
    """Two GPUs' series: GPU 0 with an energy counter, GPU 1 without one (power is integrated instead)."""
    rng = np.random.default_rng(7)
    series = {}
    for device in ("0", "1"):
        t = _times(rng, 0.05, 12.0, 0.1)
        util = rng.uniform(0, 100, t.size)
        power = rng.uniform(80, 700, t.size)
        mem = 30e9 + 1e8 * t
        mem[np.argmin(np.abs(t - 0.5))] = 75e9  # the peak is in the warm-up: the high-water mark still sees it
        series[device] = {"t": t, "util": util, "power": power, "mem": mem}
    return series


@pytest.fixture
def run_dir(tmp_path, rows, gpus):
    write_results(tmp_path, rows, manifest=MANIFEST)
    telemetry = []
    for device, s in gpus.items():
        telemetry += gpu_samples(s["t"], s["util"], s["power"], s["mem"], device=device, with_energy=device == "0")
    write_telemetry(tmp_path, telemetry[: len(telemetry) // 2], name="nvml-a.parquet")
    write_telemetry(tmp_path, telemetry[len(telemetry) // 2 :], name="nvml-b.parquet")
    seconds = np.arange(0.0, 12.0)
    write_telemetry(tmp_path, server_samples("local", seconds, seconds / 20, seconds, seconds / 2), name="vllm.parquet")
    return tmp_path


def _counter(s: dict[str, np.ndarray]) -> np.ndarray:
    """The energy counter gpu_samples writes: the running trapezoid integral of power."""
    steps = (s["power"][1:] + s["power"][:-1]) / 2 * np.diff(s["t"])
    return 1.0e6 + np.concatenate([[0.0], np.cumsum(steps)])


def _power_integral(s: dict[str, np.ndarray], start: float, end: float) -> float:
    inside = (s["t"] >= start) & (s["t"] <= end)
    t = np.concatenate([[start], s["t"][inside], [end]])
    p = np.interp(t, s["t"], s["power"])
    return float(np.sum((p[1:] + p[:-1]) / 2 * np.diff(t)))


def test_gpu_block_recomputed_with_numpy(run_dir, rows, gpus):
    summary = summarize(load_run(run_dir), telemetry=load_telemetry(run_dir))
    assert (summary.window.start_s, summary.window.end_s) == pytest.approx(WINDOW)
    gpu = summary.gpu
    assert gpu["status"] == "measured" and gpu["devices_count"] == 2
    start, end = WINDOW

    def inside(s, key):
        return s[key][(s["t"] >= start) & (s["t"] <= end)]

    pooled_util = np.concatenate([inside(s, "util") for s in gpus.values()])
    assert gpu["gpu_util_pct"]["mean"] == pytest.approx(pooled_util.mean())
    assert gpu["gpu_util_pct"]["p95"] == pytest.approx(np.percentile(pooled_util, 95))
    assert gpu["mem_util_pct"]["mean"] == pytest.approx((pooled_util / 2 + 10).mean())
    assert gpu["mem_used_high_water_bytes"] == pytest.approx(75e9)
    power_means = [inside(s, "power").mean() for s in gpus.values()]
    assert gpu["power_w"]["mean_total"] == pytest.approx(sum(power_means))
    assert gpu["power_w"]["mean_per_gpu"] == pytest.approx(np.mean(power_means))

    zero, one = gpus["0"], gpus["1"]
    counter = _counter(zero)
    energy_zero = np.interp(end, zero["t"], counter) - np.interp(start, zero["t"], counter)
    energy_one = _power_integral(one, start, end)
    by_device = {d["device"]: d for d in gpu["devices"]}
    assert (by_device["0"]["energy_method"], by_device["1"]["energy_method"]) == ("counter", "power_integral")
    assert by_device["0"]["energy_j"] == pytest.approx(energy_zero)
    assert by_device["1"]["energy_j"] == pytest.approx(energy_one)
    assert by_device["1"]["gpu_util_pct"]["p95"] == pytest.approx(np.percentile(inside(one, "util"), 95))
    assert by_device["0"]["mem_total_bytes"] == 80 * 1024**3

    energy = gpu["energy"]
    assert energy["method"] == "mixed" and energy["covered_s"] == pytest.approx(end - start)
    tokens = sum(
        r["completion_tokens"]
        for r in rows
        if r["target"] == "local" and r["status"] == "ok" and start <= r["done_s"] <= end
    )
    assert energy["targets"] == ["local"] and energy["output_tokens"] == tokens
    assert energy["joules"] == pytest.approx(energy_zero + energy_one)
    assert energy["joules_per_output_token"] == pytest.approx((energy_zero + energy_one) / tokens)


def test_counter_and_power_integral_agree_on_sample_times(run_dir, gpus):
    """Over an interval that starts and ends on samples, the counter delta equals the power integral."""
    device = load_telemetry(run_dir).source("nvml").filter(pl.col("device") == "0")
    t = gpus["0"]["t"]
    window = metrics.Window("steady", float(t[20]), float(t[90]), 0.0, 0.0, 12.0)
    joules, method, covered = device_energy(device, window)
    without_counter = device.filter(pl.col("metric") != NVML_ENERGY)
    integral, fallback, _ = device_energy(without_counter, window)
    assert (method, fallback) == ("counter", "power_integral")
    assert joules == pytest.approx(integral) and covered == pytest.approx(t[90] - t[20])


def test_a_counter_that_goes_backwards_falls_back_to_power(tmp_path, rows):
    write_results(tmp_path, rows, manifest=MANIFEST)
    times = np.arange(0.0, 11.0, 0.5)
    telemetry = [sample(NVML_POWER, t, 100.0) for t in times]
    telemetry += [sample(NVML_ENERGY, t, 5000.0 - t) for t in times]  # a reset/wrap: decreasing
    write_telemetry(tmp_path, telemetry)
    gpu = summarize(load_run(tmp_path), telemetry=load_telemetry(tmp_path)).gpu
    assert gpu["energy"]["method"] == "power_integral"
    assert gpu["energy"]["joules"] == pytest.approx(100.0 * (WINDOW[1] - WINDOW[0]))
    assert gpu["gpu_util_pct"] == {"mean": None, "p95": None}  # no utilisation samples: nothing invented


def test_samples_that_stop_early_say_how_much_was_covered(tmp_path, rows):
    write_results(tmp_path, rows, manifest=MANIFEST)
    times = np.arange(0.0, 6.01, 0.5)
    write_telemetry(tmp_path, [sample(NVML_POWER, t, 200.0) for t in times])
    energy = summarize(load_run(tmp_path), telemetry=load_telemetry(tmp_path)).gpu["energy"]
    assert energy["covered_s"] == pytest.approx(5.0) and energy["window_s"] == pytest.approx(9.0)
    assert energy["joules"] == pytest.approx(200.0 * 5.0)


def test_without_gpu_samples_the_block_is_absent(tmp_path, rows):
    write_results(tmp_path, rows, manifest=MANIFEST)
    assert summarize(load_run(tmp_path), telemetry=load_telemetry(tmp_path)).gpu == {
        "status": "absent",
        "reason": "the run has no telemetry files (RUN_DIR/telemetry/*.parquet)",
    }
    write_telemetry(tmp_path, server_samples("local", [0.0, 1.0], [0.1, 0.2], [1, 2], [0, 0]))
    gpu = summarize(load_run(tmp_path), telemetry=load_telemetry(tmp_path)).gpu
    assert gpu["status"] == "absent" and "no NVML" in gpu["reason"]


def test_no_joules_per_token_when_no_local_target_served_the_tokens(tmp_path, rows, gpus):
    """The GPUs' energy over a hosted API's tokens would be a figure of nothing: withheld, and said why."""
    manifest = {"run_id": "run-factory", "targets": [{**t, "kind": "openai"} for t in MANIFEST["targets"]]}
    write_results(tmp_path, rows, manifest=manifest)
    s = gpus["0"]
    write_telemetry(tmp_path, gpu_samples(s["t"], s["util"], s["power"], s["mem"]))
    energy = summarize(load_run(tmp_path), telemetry=load_telemetry(tmp_path)).gpu["energy"]
    assert energy["targets"] == [] and energy["output_tokens"] == 0 and energy["joules"] > 0
    assert energy["joules_per_output_token"] is None and "no target of kind vllm" in energy["withheld"]


def test_a_lost_gpu_withholds_joules_per_token_and_says_when(tmp_path, rows, gpus):
    write_results(tmp_path, rows, manifest=MANIFEST)
    s = gpus["0"]
    t = np.asarray(s["t"])
    lost_at = float(t[len(t) // 2])  # in the middle of the steady window
    kept = t <= lost_at
    series = gpu_samples(t[kept], np.asarray(s["util"])[kept], np.asarray(s["power"])[kept], np.asarray(s["mem"])[kept])
    other = gpu_samples(s["t"], s["util"], s["power"], s["mem"], device="1")
    write_telemetry(tmp_path, series + other + [sample(NVML_GPU_LOST, lost_at, 1.0)])
    gpu = summarize(load_run(tmp_path), telemetry=load_telemetry(tmp_path)).gpu
    assert gpu["lost_devices"] == ["node-a:0"]
    assert gpu["energy"]["joules_per_output_token"] is None
    assert f"lost at t={lost_at:.1f} s" in gpu["energy"]["withheld"]
    by_device = {d["device"]: d for d in gpu["devices"]}
    assert by_device["0"]["lost_at_s"] == lost_at and by_device["1"]["lost_at_s"] is None


def _loose_schema(columns, metadata=TELEMETRY_SCHEMA.metadata) -> pa.Schema:
    """The contract's fields named in `columns`, all nullable (to write files that break it), with `metadata`."""
    return pa.schema([f.with_nullable(True) for f in TELEMETRY_SCHEMA if f.name in columns], metadata=metadata)


@pytest.mark.parametrize(
    ("rows", "metadata", "fragment"),
    [
        ([{k: v for k, v in sample("power_w", 0.0, 1.0).items() if k != "metric"}], TELEMETRY_SCHEMA.metadata,
         "lacks columns ['metric']"),
        ([sample("power_w", 0.0, 1.0), {**sample("power_w", 1.0, 1.0), "value": None}], TELEMETRY_SCHEMA.metadata,
         "row 1: field value is null"),
        ([sample("power_w", 0.0, 1.0)], {b"shadowreplay.kind": b"results", b"shadowreplay.schema_version": b"1"},
         "not a telemetry file (file metadata kind b'results'"),
        ([sample("power_w", 0.0, 1.0)], {b"shadowreplay.kind": b"telemetry", b"shadowreplay.schema_version": b"3"},
         "telemetry schema_version b'3', this shadowreplay reads 1, 2"),
    ],
)  # fmt: skip
def test_bad_telemetry_files_name_file_row_and_field(tmp_path, rows, metadata, fragment):
    path = write_telemetry(tmp_path, rows, schema=_loose_schema(rows[0], metadata))
    with pytest.raises(TelemetryDataError) as info:
        load_telemetry(tmp_path)
    assert str(info.value).startswith(str(path)) and fragment in str(info.value)


def test_report_shows_the_gpu_block_and_a_bad_file_is_one_line(run_dir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")  # wide enough that no cell wraps
    assert main(["report", str(run_dir), "--prices", "none", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gpu"]["status"] == "measured"
    assert main(["report", str(run_dir), "--prices", "none"]) == 0
    out = capsys.readouterr().out
    assert "GPU utilisation and energy" in out and "all (2 GPUs)" in out and "mixed" in out
    (run_dir / "telemetry" / "broken.parquet").write_text("not parquet")
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "broken.parquet: cannot read as Parquet" in err and err.count("\n") == 1


def test_shards_of_the_samplers_writer_are_read(tmp_path, rows):
    """Files written by replay/schemas/telemetry.py's TelemetryShardWriter, as the samplers write them."""
    write_results(tmp_path, rows, manifest=MANIFEST)
    writer = TelemetryShardWriter(tmp_path / "telemetry", "run-factory", "node-a", "nvml-node-a", max_rows=7)
    for t in np.arange(0.0, 11.0, 0.5):
        writer.add("nvml", "0", float(t), NVML_POWER, 300.0)
    writer.close()
    assert len(writer.files) > 1
    energy = summarize(load_run(tmp_path), telemetry=load_telemetry(tmp_path)).gpu["energy"]
    assert energy["method"] == "power_integral" and energy["joules"] == pytest.approx(300.0 * 9.0)


def _eight_gpu_node(tmp_path, rows, servers: list[dict]) -> dict:
    """An 8-GPU node (every GPU sampled: NVML sees them all) and a run whose vLLM server used some."""
    write_results(tmp_path, rows, manifest={**MANIFEST, "servers": servers})
    t = np.arange(0.0, 12.01, 0.1)
    telemetry = []
    for gpu in range(8):
        busy = gpu in (2, 3)
        util, power = (
            (np.full(t.size, 95.0), np.full(t.size, 650.0)) if busy else (np.zeros(t.size), np.full(t.size, 70.0))
        )
        for row in gpu_samples(t, util, power, np.full(t.size, 60e9), device=str(gpu)):
            telemetry.append({**row, "gpu_uuid": f"GPU-uuid-{gpu}", "pci_bus_id": f"00000000:{0x18 + gpu:02X}:00.0"})
    write_telemetry(tmp_path, telemetry)
    return summarize(load_run(tmp_path), telemetry=load_telemetry(tmp_path)).gpu


@pytest.mark.parametrize("visible", ["2,3", "GPU-uuid-2,GPU-uuid-3"])
def test_on_an_8_gpu_node_with_tensor_parallel_2_only_the_two_serving_gpus_count(tmp_path, rows, visible):
    server = {"target": "local", "kind": "vllm", "host": "node-a", "gpus": visible}
    gpu = _eight_gpu_node(tmp_path, rows, [server])
    start, end = WINDOW
    assert gpu["serving"] == {"devices": ["node-a:2", "node-a:3"], "how": "CUDA_VISIBLE_DEVICES of the servers"}
    energy = gpu["energy"]
    assert energy["joules"] == pytest.approx(2 * 650.0 * (end - start))  # the six idle GPUs' 70 W left out
    tokens = sum(r["completion_tokens"] for r in rows if r["target"] == "local" and start <= r["done_s"] <= end)
    assert energy["output_tokens"] == tokens and energy["joules_per_output_token"] == pytest.approx(
        2 * 650.0 * (end - start) / tokens
    )
    assert gpu["devices_count"] == 2 and gpu["gpu_util_pct"]["mean"] == pytest.approx(95.0)  # not diluted
    every = gpu["all_sampled"]
    assert every["devices_count"] == 8 and every["power_w_mean_total"] == pytest.approx(2 * 650 + 6 * 70)
    assert every["gpu_util_pct"]["mean"] == pytest.approx(95.0 * 2 / 8)
    assert [d["serving"] for d in gpu["devices"]] == [g in (2, 3) for g in range(8)]


def test_a_server_given_no_gpus_uses_every_gpu_of_its_host_and_says_so(tmp_path, rows):
    gpu = _eight_gpu_node(tmp_path, rows, [{"target": "local", "kind": "vllm", "host": "node-a", "gpus": None}])
    assert gpu["devices_count"] == 8 and "given no CUDA_VISIBLE_DEVICES" in gpu["serving"]["how"]
    gpu = _eight_gpu_node(tmp_path / "old", rows, [])  # an older manifest without server identities
    assert gpu["devices_count"] == 8 and "names no server" in gpu["serving"]["how"]


def test_indices_under_cuda_s_own_order_are_used_with_a_caveat(tmp_path, rows):
    server = {"target": "local", "kind": "vllm", "host": "node-a", "gpus": "2,3", "cuda_device_order": "FASTEST_FIRST"}
    gpu = _eight_gpu_node(tmp_path, rows, [server])
    assert gpu["serving"]["devices"] == ["node-a:2", "node-a:3"]
    assert "CUDA_DEVICE_ORDER=FASTEST_FIRST: CUDA's index may not be NVML's" in gpu["serving"]["how"]


def test_the_summary_says_what_each_figure_resolves_and_gives_instantaneous_power(tmp_path, rows, gpus):
    write_results(tmp_path, rows, manifest=MANIFEST)
    s = gpus["0"]
    instant = [sample(NVML_POWER_INSTANT, t, 600.0 if i % 2 else 200.0) for i, t in enumerate(s["t"])]
    write_telemetry(tmp_path, gpu_samples(s["t"], s["util"], s["power"], s["mem"]) + instant)
    gpu = summarize(load_run(tmp_path), telemetry=load_telemetry(tmp_path)).gpu
    assert "1 s average" in gpu["resolution"]["power_w"] and "1/6 s to 1 s" in gpu["resolution"]["gpu_util_pct"]
    assert gpu["power_instant_w"]["mean"] == pytest.approx(400.0, abs=20) and gpu["power_instant_w"]["p95"] == 600.0
