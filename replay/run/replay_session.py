"""One replay from start to finish: targets loaded, rows selected and scheduled, then inside one
Session (replay/run/session.py) local servers started, Ray workers run, the manifest written and
local servers stopped (also on failure or Ctrl-C).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shadowreplay.replay.run.plan import (
    LengthClamp,
    Window,
    arrival_offsets_s,
    build_plan,
    parse_duration_s,
    select_rows,
)
from shadowreplay.replay.run.progress_display import ProgressDisplay
from shadowreplay.replay.run.runner import RunOutcome, RunSettings, run_plan
from shadowreplay.replay.run.session import Session
from shadowreplay.replay.schemas.manifest import Counts, Selection
from shadowreplay.replay.schemas.run_dir import RunDir
from shadowreplay.replay.targets.config import load_targets


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


def replay_log(request: ReplayRequest) -> RunOutcome:
    """Replay the selected rows of a traffic log against every target, inside one Session: the
    run directory refused if it already holds results, servers and Ray started and stopped, the
    manifest written on any exit."""
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
    run_dir = RunDir(request.run_dir).create_new()
    settings = RunSettings(
        run_dir=run_dir.path,
        workers=request.workers,
        address=request.address,
        keep_output_text=request.keep_output_text,
        block_size=request.block_size,
        busy_poll=request.busy_poll,
    )
    with Session(targets, run_dir, ray_address=request.address) as session:
        manifest = session.manifest
        manifest.run_id = settings.run_id
        manifest.traffic_log = str(request.log)
        manifest.selection = Selection(
            window=request.window,
            limit=request.limit,
            duration=request.duration,
            schedule=request.schedule,
            max_prompt_tokens=request.max_prompt_tokens,
            max_completion_tokens=request.max_completion_tokens,
            block_size=request.block_size,
        )
        manifest.busy_poll = request.busy_poll
        manifest.counts = Counts(
            requests=plan.num_rows,
            targets=len(session.targets),
            scheduled=plan.num_rows * len(session.targets),
            clamped_requests=int(sum(plan.column("clamped").to_pylist())),
        )
        samplers = session.telemetry_samplers(settings.run_id, run_dir)
        # NVML at 10 Hz on every node of the cluster with GPUs, one actor each; where no node has
        # GPUs, or a node has no NVML, one line says so (before the live display) and the run goes on.
        with session.gpu_samplers(settings.run_id, run_dir) as gpu_samplers:
            gpu_samplers.place()
            with ProgressDisplay(f"replay {settings.run_id}") as display:
                outcome = run_plan(
                    plan,
                    session.targets,
                    settings,
                    on_progress=display.update,
                    samplers=samplers,
                    gpu_samplers=gpu_samplers,
                )
        manifest.epoch = outcome.epoch
        manifest.wall_s = outcome.wall_s
        manifest.workers = outcome.workers
        manifest.clock_offsets = {w["worker"]: w["wall_minus_perf"] for w in outcome.workers}
        manifest.counts.rows_by_status = outcome.by_status
        manifest.counts.rows_written_by_runner_for_lost_workers = outcome.lost_rows
        manifest.telemetry = outcome.telemetry
        manifest.cancelled = outcome.cancelled
        if outcome.cancelled:
            manifest.status = "interrupted"
    return outcome
