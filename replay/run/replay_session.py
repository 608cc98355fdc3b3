"""One replay from start to finish: targets loaded, rows selected and scheduled, local servers
started, Ray workers run, the manifest written, local servers stopped (also on failure or Ctrl-C).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shadowreplay.replay.schemas.manifest import write_manifest
from shadowreplay.replay.run.progress_display import ProgressDisplay
from shadowreplay.replay.run.plan import LengthClamp, Window, arrival_offsets_s, build_plan, parse_duration_s, select_rows
from shadowreplay.replay.run.runner import RunOutcome, RunSettings, run_plan, start_ray
from shadowreplay.replay.targets.config import TargetConfig, load_targets, read_keys
from shadowreplay.replay.telemetry.gpu_node_samplers import GpuNodeSamplers


@dataclass
class ReplayRequest:
    log: Path
    target_files: list[Path]
    run_dir: Path
    window: str | None = None
    limit: int | None = None
    duration: str | None = None
    workers: int | None = None
    address: str | None = None
    max_prompt_tokens: int | None = None
    max_completion_tokens: int | None = None
    keep_output_text: bool = False
    block_size: int = 512
    busy_poll: bool = False  # workers poll without sleeping (RunSettings.busy_poll)
    # Maps the selected rows' arrival offsets (s) to send times (s): a loadgen shape (the CLI passes
    # loadgen.shapes.TraceScaled with --speed); None sends at the recorded offsets.
    send_times: Callable[[np.ndarray], np.ndarray] | None = None
    schedule: str = "recorded arrival times"  # how send_times was made, for the manifest
    extra_manifest: dict = field(default_factory=dict)


def start_local_servers(targets: list[TargetConfig], run_dir: Path, stack: contextlib.ExitStack) -> tuple[list[TargetConfig], list[dict]]:
    """Start a vLLM server for every `kind: vllm` target; returns targets with their base_url set
    and each server's identity (version, arguments, served model) for the manifest."""
    ready, identities = [], []
    for target in targets:
        if target.kind != "vllm":
            ready.append(target)
            continue
        from shadowreplay.replay.targets.vllm_server import VllmServer, default_vllm_python  # only where a server is started

        launch = target.vllm
        server = stack.enter_context(
            VllmServer(
                model=launch.model,
                served_model_name=target.model,
                python=launch.python or default_vllm_python(),
                args=launch.args,
                port=launch.port,
                env=launch.env,
                log_path=run_dir / f"vllm-{target.name}.log",
                startup_timeout_s=launch.startup_timeout_s,
            )
        )
        identities.append({"target": target.name, **server.identity()})
        ready.append(target.model_copy(update={"base_url": server.base_url}))
    return ready, identities


def telemetry_samplers(run_id: str, run_dir: Path, servers: list[dict], targets: Sequence[TargetConfig] = ()) -> list:
    """The samplers that run in this process: the Prometheus /metrics (1 Hz) of every server we
    started and of every target that names a `metrics_url`. GPUs are sampled by GpuNodeSamplers,
    on their own nodes."""
    from shadowreplay.replay.telemetry.prometheus_sampler import PrometheusSampler, ScrapeTarget

    scrape = [ScrapeTarget(s["target"], s["url"] + "/metrics") for s in servers if s.get("url")]
    scrape += [ScrapeTarget(t.name, t.metrics_url) for t in targets if t.metrics_url]
    return [PrometheusSampler(run_id, run_dir / "telemetry", scrape)] if scrape else []


def replay_log(request: ReplayRequest) -> RunOutcome:
    targets = load_targets(request.target_files)
    rows = select_rows(request.log, Window.parse(request.window) if request.window else None, request.limit)
    offsets = arrival_offsets_s(rows)
    send_times = request.send_times or (lambda offsets: offsets)
    plan = build_plan(
        rows,
        send_times(offsets),
        LengthClamp(request.max_prompt_tokens, request.max_completion_tokens),
        parse_duration_s(request.duration) if request.duration else None,
    )
    run_dir = request.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if any(run_dir.joinpath("results").glob("*.parquet")):
        raise FileExistsError(f"{run_dir} already holds results; choose a new run directory")
    settings = RunSettings(
        run_dir=run_dir,
        workers=request.workers,
        address=request.address,
        keep_output_text=request.keep_output_text,
        block_size=request.block_size,
        busy_poll=request.busy_poll,
    )
    secrets = read_keys(targets)
    started_at = time.time()
    with contextlib.ExitStack() as stack:
        live_targets, servers = start_local_servers(targets, run_dir, stack)
        cluster = start_ray(request.address)
        samplers = telemetry_samplers(settings.run_id, run_dir, servers, live_targets)
        # NVML at 10 Hz on every node of the cluster with GPUs, one actor each; where no node has
        # GPUs, or a node has no NVML, one line says so (before the live display) and the run goes on.
        gpu_samplers = stack.enter_context(GpuNodeSamplers(settings.run_id, run_dir / "telemetry"))
        gpu_samplers.place()
        with ProgressDisplay(f"replay {settings.run_id}") as display:
            outcome = run_plan(
                plan, live_targets, settings, on_progress=display.update, samplers=samplers, gpu_samplers=gpu_samplers
            )
    write_manifest(
        run_dir,
        {
            "run_id": outcome.run_id,
            "started_at": started_at,
            "epoch": outcome.epoch,
            "wall_s": outcome.wall_s,
            "traffic_log": str(request.log),
            "selection": {
                "window": request.window,
                "limit": request.limit,
                "duration": request.duration,
                "schedule": request.schedule,
                "max_prompt_tokens": request.max_prompt_tokens,
                "max_completion_tokens": request.max_completion_tokens,
                "block_size": request.block_size,
            },
            "targets": [t.public_dict() for t in live_targets],
            "servers": servers,
            "cluster": cluster,
            "workers": outcome.workers,
            "busy_poll": request.busy_poll,
            "clock_offsets": {w["worker"]: w["wall_minus_perf"] for w in outcome.workers},
            "counts": {
                "requests": plan.num_rows,
                "targets": len(live_targets),
                "scheduled": plan.num_rows * len(live_targets),
                "rows_by_status": outcome.by_status,
                "clamped_requests": int(sum(plan.column("clamped").to_pylist())),
                "rows_written_by_runner_for_lost_workers": outcome.lost_rows,
            },
            "telemetry": outcome.telemetry,
            "cancelled": outcome.cancelled,
            **request.extra_manifest,
        },
        secrets,
    )
    return outcome
