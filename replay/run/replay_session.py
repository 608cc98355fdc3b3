"""One replay from start to finish: targets loaded, rows selected and scheduled, then inside one
Session (replay/run/session.py) local servers started, Ray workers run, the manifest written and
local servers stopped (also on failure or Ctrl-C).

The manifest is written as the run starts (status `running`, with what `--resume` needs), so a
driver killed mid-run leaves a run directory that says so. `resume_run` takes such a run (or one
stopped by Ctrl-C, or with `worker_lost` rows) up again: torn shards set aside, the `cancelled` and
`worker_lost` final rows retired, and exactly the (request, target) pairs without a final row
replayed as a new segment, on a new epoch (replay/schemas/manifest.py Segment).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shadowreplay.replay.run.plan import (
    LengthClamp,
    OutputLengths,
    Window,
    arrival_offsets_s,
    build_plan,
    parse_duration_s,
    prompts_over_max,
    select_rows,
)
from shadowreplay.replay.run.progress_display import ProgressDisplay
from shadowreplay.replay.run.runner import RunOutcome, RunSettings, pairs_of, run_plan
from shadowreplay.replay.run.session import Session
from shadowreplay.replay.schemas.manifest import Counts, ResumeFacts, Segment, Selection
from shadowreplay.replay.schemas.results import RESUMABLE_STATUSES
from shadowreplay.replay.schemas.run_dir import RunDir, RunDirError
from shadowreplay.replay.targets.config import TargetConfig, load_targets


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
    # "recorded": every row asks for exactly its recorded completion_tokens (where known); "natural":
    # the model ends its answer (replay/run/plan.py LengthClamp)
    output_lengths: OutputLengths = "recorded"
    keep_output_text: bool = False
    block_size: int = 512
    busy_poll: bool = False  # workers poll without sleeping (RunSettings.busy_poll)
    worker_cpus: list[int] | None = None  # the workers' own CPUs here; Ray and a server get the rest
    # Maps the selected rows' arrival offsets (s) to send times (s): a loadgen shape (the CLI passes
    # loadgen.shapes.TraceScaled with --speed); None sends at the recorded offsets.
    send_times: Callable[[np.ndarray], np.ndarray] | None = None
    schedule: str = "recorded arrival times"  # how send_times was made, for the manifest
    # Changes how many requests arrive on the log's timeline, before send_times: (rows, offsets) ->
    # (rows, offsets, what it did for the manifest's selection.volume); the CLI passes
    # loadgen/volume.py's on_timeline for --volume. None: the rows as selected.
    volume: Callable[[pa.Table, np.ndarray], tuple[pa.Table, np.ndarray, dict[str, Any]]] | None = None
    # The targets themselves, loaded (e.g. a target at another replica count, `capacity --verify`),
    # instead of target_files.
    targets: list[TargetConfig] | None = None
    # What a verb built on replay needs to resume beyond the replay itself (a shadow's request), kept
    # in the manifest's resume facts.
    resume_extra: dict[str, Any] | None = None


def replay_log(request: ReplayRequest) -> RunOutcome:
    """Replay the selected rows of a traffic log against every target, inside one Session: the
    run directory refused if it already holds results, servers and Ray started and stopped, the
    manifest written on any exit."""
    targets = request.targets if request.targets is not None else load_targets(request.target_files)
    rows = select_rows(request.log, Window.parse(request.window) if request.window else None, request.limit)
    offsets = arrival_offsets_s(rows)
    volume: dict[str, Any] | None = None
    if request.volume is not None:
        rows, offsets, volume = request.volume(rows, offsets)
    send_times = request.send_times or (lambda offsets: offsets)
    clamp = LengthClamp(request.max_prompt_tokens, request.max_completion_tokens, request.output_lengths)
    plan = build_plan(
        rows,
        send_times(offsets),
        clamp,
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
    with Session(targets, run_dir, ray_address=request.address, worker_cpus=request.worker_cpus) as session:
        settings.worker_cpus = session.placement.loadgen_cpus  # off the local server's CPUs
        manifest = session.manifest
        manifest.run_id = settings.run_id
        manifest.resume = ResumeFacts(
            targets=[t.public_dict() for t in targets],
            workers=request.workers,
            address=request.address,
            keep_output_text=request.keep_output_text,
            block_size=request.block_size,
            busy_poll=request.busy_poll,
            worker_cpus=request.worker_cpus,
            shadow=request.resume_extra,
        )
        manifest.traffic_log = str(request.log)
        manifest.selection = Selection(
            window=request.window,
            limit=request.limit,
            duration=request.duration,
            schedule=request.schedule,
            volume=volume,
            max_prompt_tokens=request.max_prompt_tokens,
            max_completion_tokens=request.max_completion_tokens,
            output_lengths=request.output_lengths,
            block_size=request.block_size,
        )
        manifest.busy_poll = request.busy_poll
        manifest.counts = Counts(
            requests=plan.num_rows,
            targets=len(session.targets),
            scheduled=plan.num_rows * len(session.targets),
            prompts_over_max=prompts_over_max(plan, clamp),
        )
        outcome = _run_segment(session, plan, settings, run_dir, plan.num_rows * len(session.targets))
        manifest.epoch = outcome.epoch
        manifest.wall_s = outcome.wall_s
        manifest.workers = outcome.workers
        manifest.clock_offsets = {w["worker"]: w["wall_minus_perf"] for w in outcome.workers}
        manifest.telemetry = outcome.telemetry
    return outcome


def _run_segment(session: Session, plan: pa.Table, settings: RunSettings, run_dir: RunDir, pairs: int) -> RunOutcome:
    """Run `plan` as segment `settings.segment` of the run: the manifest written first (status
    running), then the workers, then the segment's facts and the run's counts from the rows on disk."""
    manifest = session.manifest
    segment = Segment(
        segment=settings.segment,
        started_at=time.time(),
        pairs=pairs,
        from_s=float(pc.min(plan.column("scheduled_s")).as_py() or 0.0) if plan.num_rows else None,
        status="running",
        command=list(sys.argv),
    )
    manifest.segments.append(segment)
    manifest.status = "running"
    session.write_manifest(run_dir, manifest)  # what a killed driver leaves: a run that says it did not finish
    samplers = session.telemetry_samplers(settings.run_id, run_dir)
    # NVML at 10 Hz on every node of the cluster with GPUs, one actor each; where no node has
    # GPUs, or a node has no NVML, one line says so (before the live display) and the run goes on.

    def started(epoch: float, workers: list[dict]) -> None:
        segment.epoch, segment.workers = epoch, workers
        segment.clock_offsets = {w["worker"]: w["wall_minus_perf"] for w in workers}
        if settings.segment == 0:
            manifest.epoch, manifest.workers, manifest.clock_offsets = epoch, workers, segment.clock_offsets
        session.write_manifest(run_dir, manifest)

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
                on_start=started,
            )
    segment.ended_at = time.time()
    segment.epoch = outcome.epoch
    segment.workers = outcome.workers  # replacements included
    segment.clock_offsets = {w["worker"]: w["wall_minus_perf"] for w in outcome.workers}
    segment.lost_workers = outcome.lost_workers
    segment.status = "interrupted" if outcome.cancelled else "completed"
    manifest.counts.rows_by_status = outcome.by_status
    lost_before = manifest.counts.rows_written_by_runner_for_lost_workers or 0
    manifest.counts.rows_written_by_runner_for_lost_workers = lost_before + outcome.lost_rows
    # From the rows on disk, not the plan: the builder flags rows on the workers (a prompt raised
    # to a target's chat-template floor, a body's own max_tokens cut), per target.
    manifest.counts.clamped_requests, manifest.counts.raised_requests = length_counts(run_dir)
    manifest.cancelled = outcome.cancelled
    manifest.status = "interrupted" if outcome.cancelled else "completed"
    return outcome


class ResumeError(RunDirError):
    """A run directory that cannot be resumed (no manifest, or one from before resume existed)."""


def resume_run(path: Path) -> RunOutcome:
    """Replay exactly the (request, target) pairs of the run in `path` that have no final row (or a
    `cancelled` / `worker_lost` one), as a new segment of the same run: see the module docstring."""
    from shadowreplay.replay.targets.config import target_from_public_dict

    run_dir = RunDir(path)
    manifest = run_dir.read_manifest()
    if manifest is None or manifest.resume is None or manifest.run_id is None:
        why = "it has no manifest.json" if manifest is None else "its manifest has no resume facts (an older run?)"
        raise ResumeError(f"{path}: cannot resume: {why}")
    if not run_dir.plan_shards():
        raise ResumeError(f"{path}: cannot resume: no plan shards in {run_dir.plan_dir} (a closed-loop run?)")
    facts = manifest.resume
    targets = [target_from_public_dict(entry, f"{run_dir.manifest_path} resume.targets") for entry in facts.targets]
    scan = run_dir.scan_results()
    torn = run_dir.set_aside_torn(scan.torn)
    for shard, why in scan.torn:
        print(f"replay: set aside a torn result shard {shard.name} ({why}); its requests are replayed", flush=True)
    retired = run_dir.retire_final_rows(RESUMABLE_STATUSES)
    plan = missing_pairs(run_dir, targets)
    pairs = pairs_of(plan, targets)
    segment = len(manifest.segments) or 1
    print(
        f"replay: resuming {manifest.run_id} as segment {segment}: {pairs:,} (request, target) pair(s) without a "
        f"final row ({retired:,} cancelled or worker_lost rows retired, {len(torn)} torn shard(s) set aside)",
        flush=True,
    )
    settings = RunSettings(
        run_dir=run_dir.path,
        run_id=manifest.run_id,
        workers=facts.workers,
        address=facts.address,
        keep_output_text=facts.keep_output_text,
        block_size=facts.block_size,
        busy_poll=facts.busy_poll,
        segment=segment,
    )
    with Session(
        targets, run_dir, ray_address=facts.address, worker_cpus=facts.worker_cpus, manifest=manifest
    ) as session:
        settings.worker_cpus = session.placement.loadgen_cpus
        if not plan.num_rows:
            manifest.counts.rows_by_status = run_dir.scan_results().by_status()
            manifest.status = "completed"
            print("replay: nothing to resume: every (request, target) pair has its final row", flush=True)
            return RunOutcome(manifest.run_id, manifest.counts.rows_by_status, [], None, 0.0, False, 0)
        outcome = _run_segment(session, plan, settings, run_dir, pairs)
        session.manifest.segments[-1].retired_rows = retired
        session.manifest.segments[-1].torn_shards = [p.name for p in torn]
    return outcome


def missing_pairs(run_dir: RunDir, targets: list[TargetConfig]) -> pa.Table:
    """The run's plan rows (from its plan shards, shard by shard) with a target still missing its
    final row, each with `only_targets` (null: every target), in schedule order."""
    from shadowreplay.replay.run.runner import without_final

    index = run_dir.final_rows()
    parts = [without_final(pq.read_table(shard), targets, index) for shard in run_dir.plan_shards()]
    parts = [part for part in parts if part.num_rows]
    if not parts:
        return pq.read_table(run_dir.plan_shards()[0]).slice(0, 0)
    plan = pa.concat_tables(parts, promote_options="permissive")
    return plan.sort_by("scheduled_s")


def length_counts(run_dir: RunDir) -> tuple[int, int]:
    """(clamped, raised): requests with a final result row flagged `clamped` / `raised`, for any
    target, over the run's committed result shards; the manifest's counts, so they equal the rows'."""
    clamped: set[str] = set()
    raised: set[str] = set()
    for shard in run_dir.result_shards():
        names = pq.read_schema(shard).names
        table = pq.read_table(shard, columns=[c for c in ("request_id", "final", "clamped", "raised") if c in names])
        table = table.filter(table.column("final"))
        for flag, found in (("clamped", clamped), ("raised", raised)):
            if flag in names:
                flagged = table.filter(pc.fill_null(table.column(flag), False))
                found.update(flagged.column("request_id").to_pylist())
    return len(clamped), len(raised)
