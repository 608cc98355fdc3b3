"""The replay half of `shadowreplay shadow`: the baseline, the candidate and (with --aa) a second copy of the
baseline replayed on one timeline, every request sent to each at the same scheduled time; before it, the
request facts the judgement needs (RUN_DIR/requests.parquet) and the chat-template check
(RUN_DIR/prompt_format.json). The judgement itself is analysis (analysis/shadow/judge_run.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shadowreplay.analysis.shadow.gates_file import JudgeSpec
from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.run.plan import OutputLengths, Window, select_rows
from shadowreplay.replay.run.replay_session import ReplayRequest, replay_log, resume_run
from shadowreplay.replay.run.runner import RunOutcome
from shadowreplay.replay.schemas.run_dir import RunDir, RunDirError
from shadowreplay.replay.schemas.shadow_requests import (
    JUDGE_ID_SEPARATOR,
    PRODUCTION_SIDE,
    shadow_requests,
    write_shadow_requests,
)
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA
from shadowreplay.replay.targets.config import TargetConfig, load_target
from shadowreplay.replay.targets.prompt_format import PromptFormatReport, check_prompt_formats

PRODUCTION = PRODUCTION_SIDE  # the baseline name meaning the log's own answers
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


RESUMED_FIELDS = (
    "log",
    "baseline",
    "candidate",
    "aa",
    "window",
    "limit",
    "duration",
    "workers",
    "address",
    "output_lengths",
    "max_prompt_tokens",
    "max_completion_tokens",
    "worker_cpus",
)


def resume_facts(request: ShadowRequest) -> dict[str, Any]:
    """The shadow's request as the manifest keeps it for `shadow --resume` (paths as text)."""
    facts = {name: getattr(request, name) for name in RESUMED_FIELDS}
    return {name: str(value) if isinstance(value, Path) else value for name, value in facts.items()}


def resumed_request(facts: dict[str, Any], run_dir: Path) -> ShadowRequest:
    """The shadow's request again, from its manifest's facts (resume_facts)."""
    baseline = str(facts["baseline"])
    return ShadowRequest(
        log=Path(facts["log"]),
        baseline=baseline if baseline == PRODUCTION else Path(baseline),
        candidate=Path(facts["candidate"]),
        run_dir=run_dir,
        aa=bool(facts.get("aa")),
        window=facts.get("window"),
        limit=facts.get("limit"),
        duration=facts.get("duration"),
        workers=facts.get("workers"),
        address=facts.get("address"),
        output_lengths=facts.get("output_lengths") or "natural",
        max_prompt_tokens=facts.get("max_prompt_tokens"),
        max_completion_tokens=facts.get("max_completion_tokens"),
        worker_cpus=facts.get("worker_cpus"),
    )


def resume_judge(request: ShadowRequest, chosen: ShadowTargets, judge: JudgeSpec) -> RunOutcome:
    """The judge's run after a resume: resumed where it had started, else run."""
    judge_dir = RunDir(request.run_dir).judge_dir
    if judge_dir.read_manifest() is not None:
        return resume_run(judge_dir.path)
    return judge_answers(request, chosen, judge)


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
            resume_extra=resume_facts(request),
        )
    )


def request_text(messages: str | None, prompt: str | None) -> str:
    """What a request asked, for a judge: its messages as `role: content` lines (text parts of list contents), or
    its completions prompt."""
    if messages is None:
        return prompt or ""
    try:
        parsed = json.loads(messages)
    except ValueError:
        return messages
    lines = []
    for message in parsed if isinstance(parsed, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        lines.append(f"{message.get('role', '?')}: {content or ''}" if isinstance(message, dict) else str(message))
    return "\n".join(lines)


def _answers(run_dir: RunDir, targets: list[str]) -> pa.Table:
    """request_id, target, output_text of the final ok rows of `targets` with an answer."""
    tables = []
    for shard in run_dir.result_shards():
        table = pq.read_table(shard, columns=["request_id", "target", "final", "status", "output_text"])
        keep = pc.and_(
            pc.and_(table.column("final"), pc.equal(pc.cast(table.column("status"), pa.string()), "ok")),
            pc.is_in(pc.cast(table.column("target"), pa.string()), value_set=pa.array(targets, pa.string())),
        )
        kept = table.filter(pc.and_(keep, pc.is_valid(table.column("output_text"))))
        tables.append(
            kept.select(["request_id", "target", "output_text"]).cast(
                pa.schema([("request_id", pa.string()), ("target", pa.string()), ("output_text", pa.string())])
            )
        )
    return pa.concat_tables(tables) if tables else pa.table({"request_id": [], "target": [], "output_text": []})


def judge_log(request: ShadowRequest, chosen: ShadowTargets, judge: JudgeSpec) -> Path:
    """RUN_DIR/judge-log.parquet: one rubric prompt per answer of every side (production's own answers too, where
    they are the baseline), `1 / judge.rate` s apart, id `<request_id>|<side>`."""
    run_dir = RunDir(request.run_dir)
    rows = select_rows(request.log, Window.parse(request.window) if request.window else None, request.limit)
    asked: dict[str, tuple[str, str | None, str | None]] = {}
    for row in rows.select(["request_id", "messages", "prompt", "reference", "response_text"]).to_pylist():
        asked[row["request_id"]] = (
            request_text(row["messages"], row["prompt"]),
            row["reference"],
            row["response_text"],
        )
    sides = [t.name for t in chosen.targets]
    answers: list[tuple[str, str, str]] = [
        (a["request_id"], a["target"], a["output_text"]) for a in _answers(run_dir, sides).to_pylist()
    ]
    if chosen.baseline == PRODUCTION:
        answers += [(rid, PRODUCTION, text) for rid, (_, _, text) in asked.items() if text is not None]
    start = datetime(2000, 1, 1, tzinfo=UTC)
    judged: list[dict[str, Any]] = []
    params = json.dumps({"temperature": 0, "max_tokens": judge.max_tokens})
    for request_id, side, answer in sorted(answers, key=lambda a: (a[0], a[1])):
        question, reference, _ = asked.get(request_id, ("", None, None))
        prompt = judge.prompt(question, answer, reference)
        judged.append(
            {
                "request_id": f"{request_id}{JUDGE_ID_SEPARATOR}{side}",
                "arrival_time": start + timedelta(seconds=len(judged) / judge.rate),
                "api": "chat",
                "messages": json.dumps([{"role": "user", "content": prompt}]),
                "params": params,
                "completion_tokens": judge.max_tokens,
                "tag": side,
            }
        )
    if not judged:
        raise ShadowError(f"{run_dir.path}: no answer to judge (no side answered a request)")
    table = pa.Table.from_pylist(judged, schema=TRAFFIC_LOG_SCHEMA)
    pq.write_table(table, run_dir.judge_log_path)
    return run_dir.judge_log_path


def judge_answers(request: ShadowRequest, chosen: ShadowTargets, judge: JudgeSpec) -> RunOutcome:
    """The judge's run (RUN_DIR/judge): judge_log replayed against the judge target, its replies kept."""
    log = judge_log(request, chosen, judge)
    return replay_log(
        ReplayRequest(
            log=log,
            target_files=[judge.target],
            run_dir=RunDir(request.run_dir).judge_dir.path,
            workers=request.workers,
            address=request.address,
            output_lengths="natural",
            max_completion_tokens=judge.max_tokens,
            keep_output_text=True,
            worker_cpus=request.worker_cpus,
        )
    )
