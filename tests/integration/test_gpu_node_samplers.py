"""NVML sampler actors on the GPU nodes of a real local Ray instance.

Ray is started with a fake GPU resource (`num_gpus=1`; this machine may have none) and the actors
load a stand-in NVML module by import spec (`tests.integration.test_gpu_node_samplers:TWO_GPUS`): each actor
process imports this module and gets its own copy of the stand-in (Ray workers get the driver's
sys.path). Ray is shut down before and after, so other test modules start their own.
"""

from __future__ import annotations

import logging
import os
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

from shadowreplay.replay.run.plan import build_plan, select_rows
from shadowreplay.replay.run.runner import START_LEAD_S, RunSettings, run_plan
from shadowreplay.replay.schemas.telemetry import (
    NVML_ENERGY,
    NVML_GPU_UTIL,
    NVML_MEM_RESERVED,
    NVML_MEM_TOTAL,
    NVML_MEM_USED,
    NVML_MEM_UTIL,
    NVML_POWER,
    NVML_POWER_INSTANT,
    NVML_SM_CLOCK,
    NVML_TEMPERATURE,
    TELEMETRY_SCHEMA,
)
from shadowreplay.replay.targets.config import load_target
from shadowreplay.replay.telemetry.gpu_node_samplers import NO_GPU_NODE_LINE, GpuNodeSamplers, gpu_nodes, node_off_line
from tests.support.faulty_server import FaultyServerThread
from tests.support.nvml_stand_in import StandInNvml
from tests.support.target_files import write_target
from tests.support.traffic_logs import log_row, write_log

NVML_METRICS = {
    NVML_GPU_UTIL,
    NVML_MEM_UTIL,
    NVML_MEM_USED,
    NVML_MEM_RESERVED,
    NVML_MEM_TOTAL,
    NVML_POWER,
    NVML_POWER_INSTANT,
    NVML_ENERGY,
    NVML_SM_CLOCK,
    NVML_TEMPERATURE,
}


class InitCrashingNvml(StandInNvml):
    """A broken binding: nvmlInit raises something that is not an NVMLError."""

    def nvmlInit(self) -> None:
        raise RuntimeError("the binding does not match the driver")


# Import specs resolve to these in the actor's process.
TWO_GPUS = StandInNvml(gpus=2)
NO_LIBRARY = StandInNvml(library=False)
NO_GPU = StandInNvml(gpus=0)
CRASHING = InitCrashingNvml()
TWO_GPUS_SPEC = f"{__name__}:TWO_GPUS"
HOST = socket.gethostname()


def start_local_ray(num_gpus: int) -> None:
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=num_gpus, include_dashboard=False, logging_level=logging.WARNING)


def sampler_actors() -> list[str]:
    """Names of the sampler actors alive in the cluster (a killed one may take a moment to go)."""
    deadline = time.monotonic() + 10
    while True:
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("nvml-")]
        if not names or time.monotonic() > deadline:
            return names
        time.sleep(0.1)


def telemetry_rows(telemetry_dir: Path) -> list[dict]:
    files = sorted(telemetry_dir.glob("*.parquet"))
    for path in files:
        assert pq.read_schema(path).equals(TELEMETRY_SCHEMA, check_metadata=True)
    return [row for path in files for row in pq.read_table(path).to_pylist()]


def test_gpu_nodes_are_the_alive_nodes_with_a_gpu_resource():
    nodes = [
        {
            "NodeID": "a",
            "Alive": True,
            "NodeManagerHostname": "gpu-1",
            "NodeManagerAddress": "10.0.0.1",
            "Resources": {"CPU": 8, "GPU": 4.0},
        },
        {"NodeID": "b", "Alive": False, "NodeManagerHostname": "gpu-2", "Resources": {"GPU": 8.0}},
        {"NodeID": "c", "Alive": True, "NodeManagerHostname": "cpu-1", "Resources": {"CPU": 16, "GPU": 0.0}},
        {"NodeID": "d", "Alive": True, "NodeManagerHostname": "head", "Resources": {"CPU": 2}},
    ]
    (node,) = gpu_nodes(nodes)
    assert (node.node_id, node.host, node.address, node.gpus) == ("a", "gpu-1", "10.0.0.1", 4.0)


# The first test that starts Ray: one without GPUs, before the module's fake-GPU Ray starts.
def test_with_no_gpu_node_one_line_says_so_and_no_actor_is_made(tmp_path) -> None:
    start_local_ray(num_gpus=0)
    try:
        lines: list[str] = []
        samplers = GpuNodeSamplers("run-none", tmp_path / "telemetry", nvml_module=TWO_GPUS_SPEC, report=lines.append)
        assert samplers.place() == [] and samplers.actors == {}
        assert samplers.start(time.time()) == {}
        stats = samplers.stop()
        assert lines == [NO_GPU_NODE_LINE] == ["telemetry: NVML off (no node with GPUs in the Ray cluster)"]
        assert stats == [{"source": "nvml", "available": False, "reason": "no node with GPUs in the Ray cluster"}]
        assert sampler_actors() == []
        assert not (tmp_path / "telemetry").exists()
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def fake_gpu_ray() -> Iterator[None]:
    start_local_ray(num_gpus=1)
    yield
    ray.shutdown()


def test_an_actor_on_the_gpu_node_writes_10_hz_rows_on_the_run_timeline(tmp_path, fake_gpu_ray) -> None:
    (node,) = gpu_nodes()
    assert node.gpus == 1 and node.host == HOST
    lines: list[str] = []
    telemetry_dir = tmp_path / "telemetry"
    samplers = GpuNodeSamplers("run-1", telemetry_dir, nvml_module=TWO_GPUS_SPEC, report=lines.append)
    samplers.place()
    assert samplers.wait_ready()[node.node_id]["host"] == HOST
    before_start = time.time()
    epoch = before_start + START_LEAD_S  # as run_plan does
    statuses = samplers.start(epoch)
    assert statuses[node.node_id]["available"] and statuses[node.node_id]["reason"].startswith("2 GPU(s)")
    # The actor takes neither the GPU (vLLM's) nor a CPU (the replay workers').
    assert ray.available_resources().get("GPU") == 1 and ray.available_resources().get("CPU") == 2
    time.sleep(2.0)
    (stats,) = samplers.stop()
    after_stop = time.time()
    assert lines == []
    assert stats["available"] and stats["host"] == HOST and stats["node_id"] == node.node_id
    assert stats["pid"] != os.getpid() and not stats["errors"]
    assert sampler_actors() == []  # killed after stop

    rows = telemetry_rows(telemetry_dir)
    assert len(rows) == stats["rows_written"] == 20 * stats["samples"]  # 10 metrics x 2 GPUs a round
    assert {(r["run_id"], r["source"], r["host"]) for r in rows} == {("run-1", "nvml", HOST)}
    assert {r["device"] for r in rows} == {"0", "1"} and {r["metric"] for r in rows} == NVML_METRICS
    assert {r["value"] for r in rows if r["metric"] == NVML_POWER and r["device"] == "1"} == {350.501}
    # t_s is on the run's timeline: seconds after the epoch, by the actor's own clock mapping.
    t = sorted(r["t_s"] for r in rows if r["device"] == "0" and r["metric"] == NVML_POWER)
    assert before_start - epoch - 0.05 <= t[0] < t[-1] <= after_stop - epoch + 0.05
    assert t[0] < 0 < t[-1]  # it began before the epoch and sampled past it
    gaps = [b - a for a, b in zip(t, t[1:])]
    assert statistics.median(gaps) == pytest.approx(0.1, abs=0.01)  # 10 Hz
    assert 15 <= len(t) <= (t[-1] - t[0]) / 0.1 + 2


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (f"{__name__}:NO_LIBRARY", "no NVML library on this host (no NVIDIA driver)"),
        (f"{__name__}:NO_GPU", "NVML sees no GPU on this host"),
        ("tests.no_such_nvml_module", "cannot load the NVML module tests.no_such_nvml_module: No module named"),
        (f"{__name__}:CRASHING", "sampler actor failed: RuntimeError: the binding does not match the driver"),
    ],
)
def test_a_node_without_nvml_gives_one_off_line_and_samples_nothing(tmp_path, fake_gpu_ray, spec, reason) -> None:
    lines: list[str] = []
    samplers = GpuNodeSamplers("run-off", tmp_path / "telemetry", nvml_module=spec, report=lines.append)
    (node,) = samplers.place()
    status = samplers.start(time.time())[node.node_id]
    assert not status["available"] and status["reason"].startswith(reason)
    (stats,) = samplers.stop()
    assert lines == [node_off_line(HOST, status["reason"])]  # one line, and the run may go on
    assert stats["available"] is False and stats["reason"] == status["reason"] and stats.get("rows_written", 0) == 0
    assert not list((tmp_path / "telemetry").glob("*.parquet"))
    assert sampler_actors() == []


@pytest.fixture(scope="module")
def faulty_server():
    with FaultyServerThread() as server:
        yield server


def replay_with_gpu_samplers(tmp_path: Path, server, spec: str, lines: list[str]):
    rows = [log_row(i, 0.1 * i, {"ttft_ms": 20, "itl_ms": 50}) for i in range(8)]
    selected = select_rows(write_log(tmp_path / "log.parquet", rows))
    plan = build_plan(selected, np.asarray([0.1 * i for i in range(selected.num_rows)]))
    target = load_target(write_target(tmp_path / "t.yaml", server.base_url))
    settings = RunSettings(run_dir=tmp_path / "run", run_id="gpu-run", workers=1)
    samplers = GpuNodeSamplers(settings.run_id, settings.run_dir / "telemetry", nvml_module=spec, report=lines.append)
    outcome = run_plan(plan, [target], settings, gpu_samplers=samplers)
    return outcome, pq.read_table(settings.run_dir / "results").to_pylist()


def test_run_plan_samples_the_gpu_nodes_over_the_whole_run(tmp_path, fake_gpu_ray, faulty_server) -> None:
    lines: list[str] = []
    outcome, results = replay_with_gpu_samplers(tmp_path, faulty_server, TWO_GPUS_SPEC, lines)
    assert outcome.by_status == {"ok": 8} and lines == []
    (stats,) = outcome.telemetry
    assert stats["source"] == "nvml" and stats["available"] and stats["host"] == HOST
    rows = telemetry_rows(tmp_path / "run" / "telemetry")
    assert len(rows) == stats["rows_written"] > 0 and {r["run_id"] for r in rows} == {"gpu-run"}
    t = [r["t_s"] for r in rows]
    # The same timeline as the results: the samples span every request, send to last token.
    assert min(t) <= min(r["sent_s"] for r in results) and max(t) >= max(r["done_s"] for r in results) - 0.15
    assert sampler_actors() == []


def test_run_plan_goes_on_when_a_gpu_node_has_no_nvml(tmp_path, fake_gpu_ray, faulty_server) -> None:
    lines: list[str] = []
    outcome, results = replay_with_gpu_samplers(tmp_path, faulty_server, f"{__name__}:NO_LIBRARY", lines)
    assert outcome.by_status == {"ok": 8} and len(results) == 8
    assert lines == [node_off_line(HOST, "no NVML library on this host (no NVIDIA driver)")]
    (stats,) = outcome.telemetry
    assert stats["available"] is False and not (tmp_path / "run" / "telemetry").exists()


@pytest.mark.gpu
def test_real_nvml_in_the_actor(tmp_path, request) -> None:
    from shadowreplay.replay.telemetry.nvml_sampler import check_nvml

    status = check_nvml()
    if not status.available:
        pytest.skip(f"no GPU here: {status.reason}")
    request.getfixturevalue("fake_gpu_ray")  # one GPU resource: the actor samples every GPU of the host
    lines: list[str] = []
    samplers = GpuNodeSamplers("gpu-run", tmp_path / "telemetry", report=lines.append)  # real pynvml
    (node,) = samplers.place()
    samplers.wait_ready()
    assert samplers.start(time.time())[node.node_id]["reason"] == status.reason
    time.sleep(2.0)
    (stats,) = samplers.stop()
    print(
        f"\nNVML in a Ray actor on {stats['host']}: {stats['samples']} rounds in 2 s, "
        f"thread CPU {stats['thread_cpu_s']:.4f} s"
    )
    assert lines == [] and stats["samples"] >= 15 and not stats["errors"]
    rows = telemetry_rows(tmp_path / "telemetry")
    assert {r["device"] for r in rows} == {str(g["index"]) for g in status.gpus}
    assert {r["host"] for r in rows} == {HOST} and NVML_POWER in {r["metric"] for r in rows}


def test_each_sweep_point_samples_the_gpu_nodes(tmp_path, fake_gpu_ray, faulty_server, monkeypatch):
    import functools

    from shadowreplay.loadgen import sweep as load_sweep
    from shadowreplay.replay.run import session as run_session
    from shadowreplay.replay.schemas.run_dir import RunDir

    monkeypatch.setattr(run_session, "GpuNodeSamplers", functools.partial(GpuNodeSamplers, nvml_module=TWO_GPUS_SPEC))
    rows = select_rows(
        write_log(tmp_path / "log.parquet", [log_row(i, 0.1 * i, {"ttft_ms": 5, "itl_ms": 5}) for i in range(8)])
    )
    target = load_target(write_target(tmp_path / "t.yaml", faulty_server.base_url))
    settings = load_sweep.SweepSettings(
        shape="poisson", start=4, stop=8, points=2, duration_s=2.0, saturation_gain=-1.0, follow_ratio=0, recheck=False
    )
    with run_session.Session([target], RunDir(tmp_path / "sweep")) as session:  # Ray is already up: kept
        outcome = load_sweep.LoadSweep(rows, session, settings, tmp_path / "sweep").run()
    assert len(outcome.curve) == 2
    for point in outcome.curve:
        telemetry = telemetry_rows(tmp_path / "sweep" / point["run_dir"] / "telemetry")
        utils = [r["value"] for r in telemetry if r["metric"] == NVML_GPU_UTIL]
        assert utils and point["gpu_util_mean_pct"] is not None
        assert min(utils) <= point["gpu_util_mean_pct"] <= max(utils)
        # the scripted server is not served by these GPUs (a target of kind openai): no J/token
        assert point["joules_per_output_token"] is None
    assert sampler_actors() == []
