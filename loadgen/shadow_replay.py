"""The replay half of `shadowreplay shadow`: the baseline, the candidate and (with --aa) a second copy of the
baseline replayed on one timeline, every request sent to each at the same scheduled time; before it, the
request facts the judgement needs (RUN_DIR/requests.parquet) and the chat-template check
(RUN_DIR/prompt_format.json). The judgement itself is analysis (analysis/shadow/judge_run.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.run.plan import OutputLengths, Window, select_rows
from shadowreplay.replay.run.replay_session import ReplayRequest, replay_log
from shadowreplay.replay.run.runner import RunOutcome
from shadowreplay.replay.schemas.run_dir import RunDir, RunDirError
from shadowreplay.replay.schemas.shadow_requests import shadow_requests, write_shadow_requests
from shadowreplay.replay.targets.config import TargetConfig, load_target
from shadowreplay.replay.targets.prompt_format import PromptFormatReport, check_prompt_formats

PRODUCTION = "production"  # analysis/shadow/paired_requests.py PRODUCTION: the log's own answers
AA_SUFFIX = "-aa"


class ShadowError(ShadowReplayError, ValueError):
    """A shadow that cannot run as asked (targets with one name, a run directory in use)."""


@dataclass
class ShadowRequest:
    log: Path
    baseline: Path | str  # a target file, or PRODUCTION
    candidate: Path
    run_dir: Path
    aa: bool = False
    window: str | None = None
    limit: int | None = None
    duration: str | None = None
    workers: int | None = None
    address: str | None = None
    output_lengths: OutputLengths = "natural"
    max_prompt_tokens: int | None = None
    max_completion_tokens: int | None = None
    send_times: Callable[[np.ndarray], np.ndarray] | None = None
    schedule: str = "recorded arrival times"
    worker_cpus: list[int] | None = None


@dataclass(frozen=True)
class ShadowTargets:
    """The targets replayed and the names the judgement compares."""

    targets: list[TargetConfig]
    baseline: str
    candidate: str
    aa: str | None


def shadow_targets(request: ShadowRequest) -> ShadowTargets:
    """The candidate, the baseline (unless PRODUCTION) and its A/A copy (`<baseline>-aa`), loaded."""
    candidate = load_target(request.candidate)
    if str(request.baseline) == PRODUCTION:
        if request.aa:
            raise ShadowError("--aa copies a baseline target; with --baseline production there is none to copy")
        return ShadowTargets([candidate], PRODUCTION, candidate.name, None)
    baseline = load_target(Path(request.baseline))
    if baseline.name == candidate.name:
        raise ShadowError(f"baseline and candidate are both named {baseline.name!r}: give one a distinct `name`")
    targets = [baseline, candidate]
    aa = None
    if request.aa:
        aa = baseline.name + AA_SUFFIX
        if aa == candidate.name:
            raise ShadowError(f"the A/A copy's name {aa!r} is the candidate's: rename the candidate")
        targets.append(baseline.model_copy(update={"name": aa}))
    return ShadowTargets(targets, baseline.name, candidate.name, aa)


def prepare(request: ShadowRequest, chosen: ShadowTargets) -> PromptFormatReport:
    """RUN_DIR/requests.parquet from the rows the replay will send, and the chat-template check of those rows
    through every target's template (written beside it); RunDirError where the directory holds results."""
    run_dir = RunDir(request.run_dir)
    if run_dir.has_results():
        raise RunDirError(f"{run_dir.path} already holds results; choose a new run directory")
    rows = select_rows(request.log, Window.parse(request.window) if request.window else None, request.limit)
    run_dir.path.mkdir(parents=True, exist_ok=True)
    write_shadow_requests(shadow_requests(rows), run_dir.shadow_requests_path)
    found = check_prompt_formats(request.log, chosen.targets, request_ids=set(rows.column("request_id").to_pylist()))
    found.write(run_dir.prompt_format_dir)
    return found


def replay_shadow(request: ShadowRequest, chosen: ShadowTargets) -> RunOutcome:
    """Every selected request to every chosen target at the same scheduled time, output text kept."""
    return replay_log(
        ReplayRequest(
            log=request.log,
            target_files=[],
            targets=chosen.targets,
            run_dir=request.run_dir,
            window=request.window,
            limit=request.limit,
            duration=request.duration,
            workers=request.workers,
            address=request.address,
            max_prompt_tokens=request.max_prompt_tokens,
            max_completion_tokens=request.max_completion_tokens,
            output_lengths=request.output_lengths,
            keep_output_text=True,
            send_times=request.send_times,
            schedule=request.schedule,
            worker_cpus=request.worker_cpus,
        )
    )
