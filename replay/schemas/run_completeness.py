"""Is a run directory a whole run? What `report` says first when it is not.

`RunCompleteness.of(run_dir)` compares what the run planned with the final rows on disk and says how
the run ended, from the run directory alone (no Ray, no runner): the manifest's `status` (written
`running` as a run starts, then `completed`, `failed` or `interrupted`; a driver that was killed
leaves `running`, or no manifest at all), the planned (request, target) pairs
(`manifest.counts.scheduled` of an open-loop replay; without it, the plan shards' rows x the targets,
an estimate where the targets are only those seen in the results; unknowable for closed-loop and
Locust runs), the final rows by status, the pairs without one, duplicate final rows, torn result
shards, and what `--resume` would replay (the pairs without a final row, and those whose final row
is `cancelled` or `worker_lost`: RESUMABLE_STATUSES).

`report` takes the final rows' counts from the check pass it makes anyway (analysis/data/run_data.py
load_run, which refuses duplicate final rows) and finds torn shards by their footers
(`unreadable_shards`), so the check costs no second read (`from_facts`). Alone (`of`, and `report`
on a run it cannot read), the final rows' key columns are read as `--resume` reads them
(RunDir.scan_results), shards that cannot be read counted as torn.
`lines()` are the warnings a user reads before any figure (empty for a complete run); summary.json
keeps the whole model (`completeness`).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, computed_field, model_serializer

from shadowreplay.replay.schemas.manifest import Manifest
from shadowreplay.replay.schemas.results import RESUMABLE_STATUSES
from shadowreplay.replay.schemas.run_dir import MANIFEST_NAME, RunDir, RunDirError

MAX_REASON_CHARS = 160
"""A torn shard's reason is cut to this many characters in `lines()` (summary.json keeps it whole)."""
CLOSED_LOOP_SHAPES = ("FixedConcurrency",)
"""Sweep point shapes (loadgen/shapes.py, as shape_record names them) whose users send until time is
up: how many requests were planned is unknowable."""
STATUS_MEANING = {
    "running": "the run is still going, or its driver was killed before it finished",
    "interrupted": "the run was stopped (Ctrl-C) before it finished",
    "failed": "the run failed",
}


class TornShard(BaseModel):
    """A committed result shard that could not be read: its file name (in RUN_DIR/results) and why."""

    model_config = ConfigDict(extra="ignore")

    name: str
    reason: str


class RunCompleteness(BaseModel):
    """How much of a run is on disk, and how it ended (this module's docstring). `complete`: a manifest
    says the run completed, and every planned pair has exactly one final row, none resumable, every
    shard readable."""

    model_config = ConfigDict(extra="ignore")  # summary.json also holds `complete` and `lines`

    manifest: Literal["present", "missing", "unreadable"]
    manifest_status: Literal["completed", "failed", "interrupted", "running"] | None = None
    manifest_unreadable: str | None = None  # why manifest.json could not be read
    run_error: str | None = None  # a failed run's error, from its manifest
    driver_finished: bool | None = None  # the driver wrote how the run ended (null: unknown)
    planned_pairs: int | None = None  # (request, target) pairs the run set out to replay; null: unknowable
    planned_from: Literal["manifest", "plan", "estimate"] | None = None
    """manifest: counts.scheduled; plan: the plan shards' rows x the manifest's targets; estimate: the plan
    shards' rows x the targets seen in the results (a target without a final row is not counted)."""
    final_rows: int = 0
    final_pairs: int = 0  # distinct (request, target) pairs with a final row
    final_rows_by_status: dict[str, int] = Field(default_factory=dict)
    missing_pairs: int | None = None  # planned_pairs - final_pairs (null: planned unknowable)
    duplicate_finals: int = 0  # final rows beyond the first of their pair
    attempted_without_final: int | None = None
    """Pairs with an attempt on disk but no final row (analysis counts them from every row: RunData
    requests_without_final_row; null: not counted). Where planned_pairs is known they are among the
    missing_pairs; where it is not, they are the only missing pairs to be seen."""
    torn_shards: list[TornShard] = Field(default_factory=list)
    resumable_pairs: int = 0  # missing_pairs + final rows of RESUMABLE_STATUSES: what `--resume` replays
    resume_command: str | None = None  # how to resume it (null: the run cannot be resumed)
    not_resumable: str | None = None  # why not, where something is left to resume

    @classmethod
    def of(cls, run_dir: RunDir) -> RunCompleteness:
        """The completeness of `run_dir`, from its manifest, plan shards and result shards (each read
        here: their key columns, one shard at a time)."""
        scan = run_dir.scan_results()
        targets = pc.count_distinct(scan.finals.column("target")).as_py()
        return cls.from_facts(run_dir, scan.by_status(), targets, scan.torn, scan.duplicate_finals())

    @classmethod
    def from_facts(
        cls,
        run_dir: RunDir,
        by_status: dict[str, int],
        targets_seen: int,
        torn: list[tuple[Path, str]],
        duplicates: int = 0,
    ) -> RunCompleteness:
        """The completeness of `run_dir` from facts of its result shards another pass found (`report`:
        the check pass of analysis/data/run_data.py load_run, which refuses duplicate final rows, with
        `unreadable_shards` before it): final rows by status, the targets seen, the torn shards."""
        found: dict[str, Any] = {}
        manifest: Manifest | None = None
        try:
            manifest = run_dir.read_manifest()
        except RunDirError as exc:
            found.update(manifest="unreadable", manifest_unreadable=str(exc))
        else:
            found["manifest"] = "missing" if manifest is None else "present"
        if manifest is not None:
            found.update(
                manifest_status=manifest.status,
                run_error=manifest.error if manifest.status == "failed" else None,
                driver_finished=_driver_finished(manifest),
            )
        elif found["manifest"] == "missing":
            found["driver_finished"] = False

        final_rows = int(sum(by_status.values()))
        final_pairs = final_rows - duplicates
        planned, planned_from = _planned(run_dir, manifest, targets_seen)
        missing = max(planned - final_pairs, 0) if planned is not None else None
        resumable = (missing or 0) + sum(by_status.get(status, 0) for status in RESUMABLE_STATUSES)
        command, why_not = _resume(run_dir, manifest, found["manifest"])
        return cls(
            **found,
            planned_pairs=planned,
            planned_from=planned_from,
            final_rows=final_rows,
            final_pairs=final_pairs,
            final_rows_by_status=dict(sorted(by_status.items())),
            missing_pairs=missing,
            duplicate_finals=duplicates,
            torn_shards=[
                TornShard(name=path.name, reason=reason.replace(str(path), path.name)) for path, reason in torn
            ],
            resumable_pairs=resumable,
            resume_command=command,
            not_resumable=why_not,
        )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def complete(self) -> bool:
        return (
            self.manifest == "present"
            and self.driver_finished is True
            and self.manifest_status in ("completed", None)
            and not self.missing_pairs
            and not self.torn_shards
            and not self.duplicate_finals
            and not self.resumable_pairs
            and not self.attempted_without_final
        )

    @model_serializer(mode="wrap")
    def _with_lines(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """summary.json keeps the lines `report` printed, after the facts."""
        return {**handler(self), "lines": self.lines()}

    def lines(self) -> list[str]:
        """What a user reads before any figure: why the run is incomplete and how to resume it; empty
        for a complete run."""
        if self.complete:
            return []
        lines = [self._headline()]
        if self.manifest == "missing":
            lines.append(f"no {MANIFEST_NAME}: the run's driver never finished (killed or crashed)")
        elif self.manifest == "unreadable":
            lines.append(
                f"{MANIFEST_NAME} could not be read ({self.manifest_unreadable}): how the run ended is unknown"
            )
        elif self.manifest_status in STATUS_MEANING:
            meaning = STATUS_MEANING[self.manifest_status]
            if self.run_error:
                meaning += f": {self.run_error}"
            lines.append(f"manifest status {self.manifest_status}: {meaning}")
        elif self.manifest_status is None and not self.driver_finished:
            lines.append(f"{MANIFEST_NAME} has no status and no end time: the run's driver may not have finished")
        if self.missing_pairs is None and self.attempted_without_final:
            lines.append(
                f"{self.attempted_without_final:,} (request, target) pairs were attempted but have no final row"
            )
        if self.torn_shards:
            torn = "; ".join(f"{shard.name} ({_cut(shard.reason)})" for shard in self.torn_shards)
            lines.append(
                f"{len(self.torn_shards)} result shard(s) could not be read (torn), their rows left out: {torn}"
            )
        if self.duplicate_finals:
            lines.append(
                f"{self.duplicate_finals:,} duplicate final row(s): some (request, target) pairs have more than one"
            )
        for status, why in (
            ("worker_lost", "their worker process died with them in flight"),
            ("cancelled", "Ctrl-C, or the driver was lost"),
        ):
            if count := self.final_rows_by_status.get(status, 0):
                lines.append(f"{count:,} request{'s' if count != 1 else ''} ended {status} ({why})")
        if self.resumable_pairs or self.torn_shards:
            if self.resume_command:
                lines.append(f"resume: {self.resume_command}")
            elif self.not_resumable:
                lines.append(f"cannot be resumed: {self.not_resumable}; replay it again into a new run directory")
        lines.append("the figures below cover only the final rows on disk")
        return lines

    def _headline(self) -> str:
        if self.planned_pairs is None:
            why = "a closed-loop run, or a manifest without counts" if self.manifest == "present" else "no plan shards"
            return (
                f"INCOMPLETE: {self.final_pairs:,} (request, target) pairs have a final row; "
                f"how many were planned is unknown ({why})"
            )
        about = "about " if self.planned_from == "estimate" else ""
        text = (
            f"INCOMPLETE: {self.final_pairs:,} of {about}{self.planned_pairs:,} planned (request, target) pairs "
            "have a final row"
        )
        if self.missing_pairs:
            text += f"; {self.missing_pairs:,} have none"
        if self.planned_from == "estimate":
            text += " (planned estimated: the plan's requests x the targets that have results)"
        return text


def unreadable_shards(run_dir: RunDir) -> list[tuple[Path, str]]:
    """The result shards whose Parquet footer cannot be read, and why: the torn ones, found without
    reading a column (a shard is committed whole or not at all, so only a damaged disk makes one)."""
    torn = []
    for shard in run_dir.result_shards():
        try:
            pq.read_metadata(shard)
        except (OSError, pa.ArrowException) as exc:
            torn.append((shard, f"{type(exc).__name__}: {exc}"))
    return torn


def _driver_finished(manifest: Manifest) -> bool:
    """The manifest says how the run ended: a final status, or (a Locust run's, or one from before
    `status` was written) an end time."""
    if manifest.status is not None:
        return manifest.status != "running"
    return manifest.ended_at is not None


def _closed_loop(manifest: Manifest) -> bool:
    """A run whose users sent until time was up: Locust, or a sweep point of closed-loop users."""
    if manifest.load_generator is not None:
        return True
    point = manifest.sweep_point
    return point is not None and point.shape.get("kind") in CLOSED_LOOP_SHAPES


def _planned(
    run_dir: RunDir, manifest: Manifest | None, targets_seen: int
) -> tuple[int | None, Literal["manifest", "plan", "estimate"] | None]:
    """The planned (request, target) pairs and where the number comes from (this module's docstring)."""
    if manifest is not None:
        if manifest.counts.scheduled is not None:
            return manifest.counts.scheduled, "manifest"
        if _closed_loop(manifest):
            return None, None
    requests = _plan_requests(run_dir)
    if requests is None:
        return None, None
    if manifest is not None and manifest.targets:
        return requests * len(manifest.targets), "plan"
    return requests * targets_seen, "estimate"


def _plan_requests(run_dir: RunDir) -> int | None:
    """The rows of the first start's plan shards (each request once), from their footers; None when
    there are none or one cannot be read."""
    shards = run_dir.plan_shards()
    if not shards:
        return None
    try:
        return sum(pq.ParquetFile(shard).metadata.num_rows for shard in shards)
    except (OSError, pa.ArrowException):
        return None


def _resume(run_dir: RunDir, manifest: Manifest | None, state: str) -> tuple[str | None, str | None]:
    """The command that resumes the run, or why it cannot be resumed (as replay/run's resume decides)."""
    if manifest is None:
        return None, f"{MANIFEST_NAME} is {state}"
    if _closed_loop(manifest):
        return None, "a closed-loop run has no plan to resume"
    if manifest.resume is None or manifest.run_id is None:
        return None, f"its {MANIFEST_NAME} has no resume facts (a run from before --resume existed?)"
    if not run_dir.plan_shards():
        return None, f"no plan shards in {run_dir.plan_dir}"
    if run_dir.shadow_requests_path.exists():  # a shadow's gates are judged again after the resume
        return f"shadowreplay shadow --resume {shlex.quote(str(run_dir.path))} --gates GATES.yaml", None
    return f"shadowreplay replay --resume {shlex.quote(str(run_dir.path))}", None


def _cut(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."
