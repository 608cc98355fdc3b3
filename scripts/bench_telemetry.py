#!/usr/bin/env python
"""What do the telemetry samplers cost in CPU, next to the replay they watch?

    .venv/bin/python scripts/bench_telemetry.py [--seconds 30] [--gpus 8] [--servers 8] [--json]

Three phases, everything on 127.0.0.1 and bounded in time:
1. Idle baseline: this process, samplers off, sleeps for min(--seconds, 10) s; its CPU time over
   that wall time is the floor the sampler figures are taken above.
2. Samplers: replay/telemetry's NvmlSampler (every `--gpus` GPU at 10 Hz) and PrometheusSampler
   (`--servers` endpoints at 1 Hz) run together in this process for --seconds. Each samples on a
   thread of its own, so each one's cost is its thread's CPU time (`time.thread_time()` at the
   thread's end, the samplers' `thread_cpu_s`) plus the CPU of its `stop()` (the final Parquet
   flush, timed on the calling thread). The process's own CPU above the idle floor is reported as
   well (all threads: it also catches what a sampler costs outside its thread).
   - NVML: no GPU is needed; an in-process stand-in for pynvml (`StandInNvml`, fixed readings, the
     same function names, return shapes and units) answers the calls. A real driver call costs more
     than the stand-in's (ctypes and an ioctl): on a GPU host, `--nvml real` uses nvidia-ml-py.
   - Prometheus: /metrics is served by a separate process (so the server's CPU is not counted) from a
     page built with prometheus_client's registry holding vLLM's metric families (its gauges,
     counters and ~15 histograms of 12-26 buckets, labelled by engine and model, plus the process,
     platform, GC and HTTP families a vLLM server exposes: about 600 lines, the size of a real vLLM
     0.32 page). `--metrics-page FILE` serves a captured page instead. The M endpoints are M URLs of
     that one server.
3. A replay beside it: one replay worker process (replay/run/worker.py's ReplayWorker, as
   scripts/bench_one_worker.py runs it: its own event loop, aiohttp session, streaming client and
   Parquet result shards) sends `--replay-rate` requests/s for `--replay-tokens` tokens each to the
   scripted server (scripts/bench_scripted_server.py, another process) for `--replay-seconds`.
   Its CPU time during `run()` over that wall time is the replay's CPU use the sampler cost is set
   beside (its start-up, imports included, is reported apart).

Figures: CPU seconds per wall second = % of one core (100% = one core busy). Target: each sampler
and both together below TARGET_PCT_OF_CORE (1%) of one core: PASS or FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(REPO))

from shadowreplay.replay.clock import ClockMapping  # noqa: E402
from shadowreplay.replay.schemas.run_dir import RunDir  # noqa: E402
from shadowreplay.replay.telemetry.nvml_sampler import NvmlSampler  # noqa: E402
from shadowreplay.replay.telemetry.prometheus_sampler import PrometheusSampler, ScrapeTarget  # noqa: E402

TARGET_PCT_OF_CORE = 1.0
NVML_HZ = 10.0
PROMETHEUS_HZ = 1.0
MAX_BASELINE_S = 10.0
MAX_REPLAY_S = 10.0
START_TIMEOUT_S = 30.0


# -- the pynvml stand-in ------------------------------------------------------------------------
class StandInNVMLError(Exception):
    """pynvml.NVMLError's shape: the NVML return code in `.value`."""

    def __init__(self, value: int):
        super().__init__(f"NVML error {value}")
        self.value = value


class StandInNvml:
    """The pynvml calls NvmlSampler makes, answered for `gpus` fake H100s with plausible, moving readings."""

    NVMLError = StandInNVMLError
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0
    MEMORY_TOTAL = 85_899_345_920
    nvmlMemory_v2 = 0x02000028  # the calls of a current driver and nvidia-ml-py: memory v2, TemperatureV
    NVML_FI_DEV_POWER_INSTANT = 186  # and the instantaneous power field

    def __init__(self, gpus: int):
        self.gpus = gpus
        self.energy_mj = [0] * gpus
        self.random = random.Random(0)

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-{handle:08d}"

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=self.random.randint(60, 100), memory=self.random.randint(20, 60))

    def nvmlDeviceGetMemoryInfo(self, handle: int, version: int | None = None) -> SimpleNamespace:
        used, reserved = 60_000_000_000 + self.random.randint(0, 10**9), 536_870_912
        free = self.MEMORY_TOTAL - used - reserved
        return SimpleNamespace(total=self.MEMORY_TOTAL, reserved=reserved, used=used, free=free)

    def nvmlDeviceGetPciInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(busId=f"00000000:{0x18 + 0x10 * handle:02X}:00.0".encode())

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self.random.randint(300_000, 700_000)  # milliwatts

    def nvmlDeviceGetFieldValues(self, handle: int, field_ids: list[int]) -> list[SimpleNamespace]:
        milliwatts = SimpleNamespace(uiVal=self.random.randint(250_000, 750_000))
        return [SimpleNamespace(nvmlReturn=0, valueType=1, value=milliwatts) for _ in field_ids]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        self.energy_mj[handle] += 50_000
        return self.energy_mj[handle]  # millijoules

    def nvmlDeviceGetClockInfo(self, handle: int, clock_type: int) -> int:
        return 1980

    def nvmlDeviceGetTemperatureV(self, handle: int, sensor: int) -> int:
        return self.random.randint(55, 75)


# -- a vLLM-like /metrics page --------------------------------------------------------------------
LATENCY_BUCKETS_S = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
TTFT_BUCKETS_S = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS_S = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
HTTP_BUCKETS_S = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    2.5,
    3.0,
    3.5,
    4.0,
    4.5,
    5.0,
    7.5,
    10.0,
    30.0,
    60.0,
)


class VllmLikeMetrics:
    """A prometheus_client registry with vLLM's metric families, moved a little at every scrape."""

    def __init__(self, engines: int = 1, model: str = "meta-llama/Llama-3.1-8B-Instruct") -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.gc_collector import GCCollector
        from prometheus_client.platform_collector import PlatformCollector
        from prometheus_client.process_collector import ProcessCollector

        self.registry = registry = CollectorRegistry()
        GCCollector(registry=registry)
        PlatformCollector(registry=registry)
        ProcessCollector(registry=registry)
        labels = ("engine", "model_name")
        self.labels = [(str(e), model) for e in range(engines)]
        self.random = random.Random(1)
        self.gauges = [
            Gauge("vllm:num_requests_running", "Requests in model execution batches.", labels, registry=registry),
            Gauge("vllm:num_requests_waiting", "Requests waiting to be processed.", labels, registry=registry),
            Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels, registry=registry),
            Gauge("vllm:engine_sleep_state", "Engine sleep state.", (*labels, "sleep_state"), registry=registry),
        ]
        self.counters = [
            Counter(f"vllm:{name}", f"vLLM {name.replace('_', ' ')}.", labels, registry=registry)
            for name in (
                "prefix_cache_queries",
                "prefix_cache_hits",
                "external_prefix_cache_queries",
                "external_prefix_cache_hits",
                "mm_cache_queries",
                "mm_cache_hits",
                "num_preemptions",
                "prompt_tokens",
                "generation_tokens",
                "prompt_tokens_cached",
            )
        ]
        self.success = Counter(
            "vllm:request_success", "Finished requests.", (*labels, "finished_reason"), registry=registry
        )
        histogram_buckets = {
            "request_prompt_tokens": TOKEN_BUCKETS,
            "request_generation_tokens": TOKEN_BUCKETS,
            "iteration_tokens_total": TOKEN_BUCKETS,
            "request_max_num_generation_tokens": TOKEN_BUCKETS,
            "request_params_n": (1, 2, 5, 10, 20),
            "request_params_max_tokens": TOKEN_BUCKETS,
            "time_to_first_token_seconds": TTFT_BUCKETS_S,
            "inter_token_latency_seconds": ITL_BUCKETS_S,
            "request_time_per_output_token_seconds": ITL_BUCKETS_S,
            "e2e_request_latency_seconds": LATENCY_BUCKETS_S,
            "request_queue_time_seconds": LATENCY_BUCKETS_S,
            "request_inference_time_seconds": LATENCY_BUCKETS_S,
            "request_prefill_time_seconds": LATENCY_BUCKETS_S,
            "request_decode_time_seconds": LATENCY_BUCKETS_S,
        }
        self.histograms = {
            name: Histogram(
                f"vllm:{name}", f"vLLM {name.replace('_', ' ')}.", labels, buckets=buckets, registry=registry
            )
            for name, buckets in histogram_buckets.items()
        }
        self.http_requests = Counter(
            "http_requests", "Total HTTP requests.", ("handler", "method", "status"), registry=registry
        )
        self.http_latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency.",
            ("handler", "method"),
            buckets=HTTP_BUCKETS_S,
            registry=registry,
        )
        self.handlers = ("/v1/completions", "/v1/chat/completions", "/metrics", "/health", "/v1/models")
        for _ in range(50):
            self.advance()

    def advance(self) -> None:
        """One scrape interval of a busy server: gauges move, counters and histograms grow."""
        r = self.random
        for labels in self.labels:
            self.gauges[0].labels(*labels).set(r.randint(0, 256))
            self.gauges[1].labels(*labels).set(r.randint(0, 32))
            self.gauges[2].labels(*labels).set(r.random())
            for state in ("awake", "weights_offloaded", "discard_all"):
                self.gauges[3].labels(*labels, state).set(1 if state == "awake" else 0)
            for counter in self.counters:
                counter.labels(*labels).inc(r.randint(0, 5000))
            for reason in ("stop", "length", "abort", "error"):
                self.success.labels(*labels, reason).inc(r.randint(0, 20))
            for _name, histogram in self.histograms.items():
                top = histogram._upper_bounds[-2]  # noqa: SLF001 - the largest finite bucket
                for _ in range(5):
                    histogram.labels(*labels).observe(r.uniform(0, top / 4))
        for handler in self.handlers:
            self.http_requests.labels(handler, "POST" if handler.startswith("/v1/c") else "GET", "2xx").inc(
                r.randint(0, 50)
            )
            self.http_latency.labels(handler, "POST").observe(r.uniform(0, 5))

    def page(self) -> str:
        from prometheus_client import generate_latest

        self.advance()
        return generate_latest(self.registry).decode()


def serve_metrics(page_file: Path | None) -> None:
    """The /metrics server process: binds 127.0.0.1 on a free port, prints `port N`, serves until killed."""
    from aiohttp import web

    metrics = None if page_file else VllmLikeMetrics()
    fixed = page_file.read_text() if page_file else None

    async def handle(request: web.Request) -> web.Response:
        text = fixed if fixed is not None else cast(VllmLikeMetrics, metrics).page()  # no page file: live metrics
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def main() -> None:
        app = web.Application()
        app.add_routes([web.get("/metrics", handle)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        print(f"port {sock.getsockname()[1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# -- child processes -----------------------------------------------------------------------------
@contextlib.contextmanager
def child(command: list[str], ready: str, log: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run `command`, wait for a stdout line starting with `ready` (returned), terminate it at the end."""
    with log.open("w") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        line = ""
        assert process.stdout is not None  # stdout=PIPE
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if line.startswith(ready) or process.poll() is not None:
                break
        if not line.startswith(ready):
            raise RuntimeError(f"{command[1]} did not start ({line.strip()!r}); see {log}")
        yield process, line.strip()
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- measurements --------------------------------------------------------------------------------
@dataclass
class CpuShare:
    """CPU seconds over wall seconds; `pct_of_core` = 100 x cpu_s / wall_s."""

    cpu_s: float
    wall_s: float

    @property
    def pct_of_core(self) -> float:
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


def idle_baseline(seconds: float) -> CpuShare:
    """This process's CPU time while it only sleeps."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    return CpuShare(time.process_time() - cpu0, time.perf_counter() - wall0)


def run_samplers(args: argparse.Namespace, metrics_url: str, workdir: Path) -> dict[str, Any]:
    """Both samplers for args.seconds; each one's thread CPU + stop() CPU, and the process's CPU."""
    nvml = None if args.nvml == "real" else StandInNvml(args.gpus)
    clock = ClockMapping(ClockMapping.measure_wall_minus_perf(), time.time())
    gpu_sampler = NvmlSampler("bench", RunDir(workdir).telemetry_dir, interval_s=1.0 / NVML_HZ, nvml=nvml, host="bench")
    targets = [ScrapeTarget(f"server-{i}", f"{metrics_url}?server={i}") for i in range(args.servers)]
    server_sampler = PrometheusSampler(
        "bench", RunDir(workdir).telemetry_dir, targets, interval_s=1.0 / PROMETHEUS_HZ, host="bench"
    )
    cpu0, wall0 = time.process_time(), time.perf_counter()
    status = gpu_sampler.start(clock)
    if not status.available:
        raise SystemExit(f"NVML: {status.reason}")
    server_sampler.start(clock)
    time.sleep(args.seconds)
    stop0 = time.thread_time()
    gpu_stats = gpu_sampler.stop()
    stop1 = time.thread_time()
    server_stats = server_sampler.stop()
    stop2 = time.thread_time()
    wall = time.perf_counter() - wall0
    process = CpuShare(time.process_time() - cpu0, wall)
    return {
        "wall_s": wall,
        "nvml": (CpuShare(gpu_stats["thread_cpu_s"] + stop1 - stop0, wall), gpu_stats),
        "prometheus": (CpuShare(server_stats["thread_cpu_s"] + stop2 - stop1, wall), server_stats),
        "process": process,
    }


def replay_worker(args: argparse.Namespace) -> None:
    """The replay worker process: ReplayWorker sending a constant rate; prints its CPU use as JSON."""
    spec = importlib.util.spec_from_file_location("bench_one_worker", SCRIPTS / "bench_one_worker.py")
    assert spec is not None and spec.loader is not None  # a .py file: the source loader
    one_worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(one_worker)
    from shadowreplay.replay.run.worker import ReplayWorker, WorkerSettings

    count = max(1, round(args.replay_rate * args.replay_seconds))
    out = Path(args.out)
    settings = WorkerSettings(run_id=out.name, worker="w0", run_dir=str(out))
    plan = one_worker.constant_rate_plan(args.replay_rate, count, args.replay_tokens)
    worker = ReplayWorker(settings, [one_worker.scripted_target(args.base_url)], plan)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    by_status = worker.run(epoch=time.time() + one_worker.START_LEAD_S)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "cpu_s": cpu,
                "wall_s": wall,
                "process_cpu_s": usage.ru_utime + usage.ru_stime,
                "requests": count,
                "by_status": by_status,
            }
        ),
        flush=True,
    )


def run_replay(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The scripted server and one replay worker process; the worker's own CPU figures."""
    port = free_port()
    server = [
        sys.executable,
        str(SCRIPTS / "bench_scripted_server.py"),
        "--port",
        str(port),
        "--ttft-ms",
        "50",
        "--itl-ms",
        "10",
        "--tokens",
        str(args.replay_tokens),
    ]
    with child(server, "scripted server listening", workdir / "scripted_server.log"):
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--replay-worker",
            "--base-url",
            f"http://127.0.0.1:{port}/v1",
            "--out",
            str(workdir / "replay"),
            "--replay-rate",
            f"{args.replay_rate:g}",
            "--replay-seconds",
            f"{args.replay_seconds:g}",
            "--replay-tokens",
            str(args.replay_tokens),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.replay_seconds + 120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the replay worker exited with {done.returncode}: {done.stderr.strip()[-600:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def verdict(share: CpuShare) -> dict[str, Any]:
    return {
        "cpu_s": share.cpu_s,
        "wall_s": share.wall_s,
        "pct_of_core": share.pct_of_core,
        "pass": share.pct_of_core < TARGET_PCT_OF_CORE,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp:
        workdir = Path(tmp)
        serve = [sys.executable, str(Path(__file__).resolve()), "--serve-metrics"]
        if args.metrics_page:
            serve += ["--metrics-page", str(args.metrics_page)]
        with child(serve, "port ", workdir / "metrics_server.log") as (_, line):
            metrics_url = f"http://127.0.0.1:{line.split()[1]}/metrics"
            with urllib.request.urlopen(metrics_url, timeout=5) as answer:
                page = answer.read().decode()
            baseline = idle_baseline(min(args.seconds, MAX_BASELINE_S))
            sampled = run_samplers(args, metrics_url, workdir)
        replay = run_replay(args, workdir)

    nvml_share, nvml_stats = sampled["nvml"]
    prom_share, prom_stats = sampled["prometheus"]
    wall = sampled["wall_s"]
    above_idle = CpuShare(max(0.0, sampled["process"].cpu_s - baseline.cpu_s / baseline.wall_s * wall), wall)
    scrapes = {
        k: sum(c.get(k, 0) for c in prom_stats["scrapes"].values())
        for k in {k for c in prom_stats["scrapes"].values() for k in c}
    }
    replay_share = CpuShare(replay["cpu_s"], replay["wall_s"])
    ok = replay["by_status"].get("ok", 0)
    gpus = len(nvml_stats["gpus"])
    page_source = str(args.metrics_page) if args.metrics_page else "prometheus_client registry, vLLM families"
    return {
        "seconds": args.seconds,
        "target_pct_of_core": TARGET_PCT_OF_CORE,
        "baseline_idle": verdict(baseline) | {"pass": None},
        "nvml": verdict(nvml_share)
        | {
            "nvml": "pynvml" if args.nvml == "real" else "in-process stand-in",
            "gpus": gpus,
            "hz": NVML_HZ,
            "rounds": nvml_stats["samples"],
            "late_ticks": nvml_stats["late_ticks"],
            "rows_written": nvml_stats["rows_written"],
            "errors": nvml_stats["errors"],
            "pct_of_core_per_gpu": nvml_share.pct_of_core / max(1, gpus),
        },
        "prometheus": verdict(prom_share)
        | {
            "servers": args.servers,
            "hz": PROMETHEUS_HZ,
            "rounds": prom_stats["rounds"],
            "late_ticks": prom_stats["late_ticks"],
            "scrapes": scrapes,
            "rows_written": prom_stats["rows_written"],
            "page": {"source": page_source, "lines": page.count("\n"), "bytes": len(page.encode())},
            "pct_of_core_per_server": prom_share.pct_of_core / max(1, args.servers),
        },
        "both_process_above_idle": verdict(above_idle),
        "replay_worker": verdict(replay_share)
        | {
            "pass": None,
            "rate_rps": args.replay_rate,
            "tokens": args.replay_tokens,
            "requests": replay["requests"],
            "by_status": replay["by_status"],
            "output_tokens_per_s": ok * args.replay_tokens / replay["wall_s"],
            "process_cpu_s_with_startup": replay["process_cpu_s"],
        },
        # both samplers' threads as a percentage of the replay worker's CPU rate (CPU s per wall s each)
        "telemetry_pct_of_replay_worker_cpu": 100.0
        * (nvml_share.pct_of_core + prom_share.pct_of_core)
        / replay_share.pct_of_core
        if replay_share.pct_of_core > 0
        else None,
    }


def print_text(result: dict[str, Any]) -> None:
    def line(label: str, entry: dict[str, Any], extra: str = "") -> None:
        mark = {True: "PASS", False: "FAIL", None: "    "}[entry["pass"]]
        print(
            f"  {label:<46} {entry['pct_of_core']:8.3f}% of a core  {mark}  "
            f"({entry['cpu_s']:.3f} CPU s / {entry['wall_s']:.1f} s){extra}"
        )

    nvml, prom, replay = result["nvml"], result["prometheus"], result["replay_worker"]
    page = prom["page"]
    print(
        f"telemetry sampler CPU cost over {result['seconds']:g} s (target: < {result['target_pct_of_core']:g}% "
        "of one core each, and together)"
    )
    line("idle baseline (this process, samplers off)", result["baseline_idle"])
    line(
        f"NVML {nvml['hz']:g} Hz x {nvml['gpus']} GPUs ({nvml['nvml']})",
        nvml,
        f"; {nvml['pct_of_core_per_gpu']:.4f}% per GPU, {nvml['rounds']} rounds, {nvml['late_ticks']} late",
    )
    line(
        f"Prometheus {prom['hz']:g} Hz x {prom['servers']} servers",
        prom,
        f"; {prom['pct_of_core_per_server']:.4f}% per server, scrapes {prom['scrapes']}",
    )
    line("both, whole process above idle", result["both_process_above_idle"])
    print(
        f"  /metrics page: {page['lines']} lines, {page['bytes'] / 1024:.0f} KiB ({page['source']}), "
        "served by another process"
    )
    line(
        f"replay worker: {replay['rate_rps']:g} req/s x {replay['tokens']} tokens",
        replay,
        f"; {replay['output_tokens_per_s']:.0f} output tokens/s, {replay['by_status']}",
    )
    share = result["telemetry_pct_of_replay_worker_cpu"]
    if share is not None:
        print(f"  telemetry (NVML + Prometheus threads) = {share:.1f}% of the replay worker's CPU use")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="wall time the samplers run (default 30)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs of the NVML stand-in (default 8)")
    parser.add_argument("--servers", type=int, default=8, help="/metrics endpoints scraped (default 8)")
    parser.add_argument(
        "--nvml",
        choices=("stand-in", "real"),
        default="stand-in",
        help="real: nvidia-ml-py on this host's GPUs (every one; --gpus is ignored)",
    )
    parser.add_argument("--metrics-page", type=Path, metavar="FILE", help="serve this captured /metrics page instead")
    parser.add_argument("--replay-rate", type=float, default=20.0, help="replay worker's requests/s (default 20)")
    parser.add_argument("--replay-tokens", type=int, default=64, help="output tokens per replayed request (default 64)")
    parser.add_argument(
        "--replay-seconds", type=float, help=f"replay length in s (default min(--seconds, {MAX_REPLAY_S:g}))"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--serve-metrics", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--replay-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.replay_seconds is None:
        args.replay_seconds = min(args.seconds, MAX_REPLAY_S)
    if args.serve_metrics:
        serve_metrics(args.metrics_page)
        return 0
    if args.replay_worker:
        replay_worker(args)
        return 0
    if args.seconds <= 0 or args.gpus < 1 or args.servers < 1:
        parser.error("--seconds, --gpus and --servers must be positive")
    result = measure(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_text(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
