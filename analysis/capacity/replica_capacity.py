"""One replica's SLO capacity, read from a sweep (SWEEP_DIR of `shadowreplay sweep`).

Definitions (`DEFINITIONS` carries them into plan.json):
- A load point holds when it met every SLO and did not saturate (loadgen/sweep.py `holds`); outliers
  (points a repeat contradicted) are left out.
- SLO capacity: the highest offered rate of a holding point below the lowest point that does not
  hold (the sweep's own rule, so with the sweep's SLOs it is the sweep's `slo_capacity_rps`).
- Bracket: [capacity, the lowest point that does not hold): the true capacity lies inside it, to the
  sweep's resolution (its bisection steps); null above when every point held.
- With other SLOs than the sweep's, each point is judged again from its own rows
  (analysis/summary/run_summary.py with those SLOs); its saturation verdict stays the sweep's.
- Repeats: the sweep's confirmed and outlier repeats, counted: how often a point's verdict was
  measured twice, and how often the two disagreed.
- GPUs per replica: the target's `gpus_per_replica` as the sweep's manifest records it (for a
  kind vllm target, its parallel size), unless given.
- Length bounds: the sweep's --max-prompt-tokens / --max-completion-tokens and how many of its
  points' requests they cut (from the points' manifests): a capacity measured on cut requests is
  not the capacity for the log's own lengths, and the plan says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shadowreplay.analysis.data.sweep_data import read_sweep
from shadowreplay.analysis.metrics.slo import Slo, format_slos, parse_slos
from shadowreplay.errors import UserError
from shadowreplay.replay.schemas.run_dir import RunDir, SweepDir

DEFINITIONS = {
    "slo_capacity_rps": "the highest offered rate of a sweep point that met every SLO without saturating, below "
    "the lowest point that did not (outliers left out): the sweep's own rule",
    "slo_capacity_bracket_rps": "[capacity, lowest point that did not hold): the true capacity lies inside it",
    "rejudged": "with other SLOs than the sweep's, every point judged again from its own rows",
}


@dataclass(frozen=True)
class ReplicaCapacity:
    """A replica's SLO capacity from one sweep (module docstring)."""

    sweep: str
    target: str
    shape: str
    slos: str
    point_s: float  # the length of the sweep's load points
    slo_capacity_rps: float | None
    bracket_high_rps: float | None  # the lowest offered rate that did not hold (None: every point held)
    points: int
    repeats: int
    outliers: int
    rejudged: bool
    gpus_per_replica: int | None
    target_config: dict[str, Any]
    length_bounds: dict[str, int | None]  # the sweep's --max-prompt-tokens / --max-completion-tokens
    clamped_requests: int  # of its points' requests, those the bounds cut

    def json_dict(self) -> dict[str, Any]:
        return {
            "sweep": self.sweep,
            "target": self.target,
            "shape": self.shape,
            "slos": self.slos,
            "point_s": self.point_s,
            "slo_capacity_rps": self.slo_capacity_rps,
            "slo_capacity_bracket_rps": [self.slo_capacity_rps, self.bracket_high_rps],
            "points": self.points,
            "repeats": self.repeats,
            "outliers": self.outliers,
            "rejudged": self.rejudged,
            "gpus_per_replica": self.gpus_per_replica,
            "length_bounds": self.length_bounds,
            "clamped_requests": self.clamped_requests,
            "definitions": DEFINITIONS,
        }


def capacity_of(levels_holding: list[tuple[float, bool]]) -> tuple[float | None, float | None]:
    """(capacity, bracket high) from each used point's (offered rate, holds)."""
    failing = [level for level, holds in levels_holding if not holds]
    ceiling = min(failing) if failing else None
    met = [level for level, holds in levels_holding if holds and (ceiling is None or level < ceiling)]
    return (max(met) if met else None), ceiling


def replica_capacity(
    sweep_dir: str | Path, slos: tuple[Slo, ...] | None = None, gpus_per_replica: int | None = None
) -> ReplicaCapacity:
    """The SLO capacity of the sweep at `sweep_dir` under `slos` (None: the sweep's own; module docstring)."""
    directory = Path(sweep_dir)
    layout = SweepDir(directory)
    if not layout.summary_path.is_file() or not layout.curve_path.is_file():
        raise UserError(
            f"{directory}: not a sweep directory (no summary.json and curve.parquet; run `shadowreplay sweep`)"
        )
    summary, curve = read_sweep(directory)
    if summary.shape == "concurrency":
        raise UserError(
            f"{directory}: a closed-loop sweep measures users, not a rate; sweep with --shape poisson or trace"
        )
    if slos is None:
        if not summary.slos:
            raise UserError(f"{directory}: the sweep has no SLO; give --slo")
        slos = parse_slos(summary.slos)
    wanted = format_slos(slos)
    rejudged = wanted != (summary.slos or "")
    used = curve.filter(~curve.get_column("outlier"))
    if rejudged:  # the points' rows are read only to judge them again
        from shadowreplay.analysis.data.run_data import ANALYSIS_COLUMNS, load_run
        from shadowreplay.analysis.summary.run_summary import summarize
    judged: list[tuple[float, bool]] = []
    bounds: dict[str, int | None] = {"max_prompt_tokens": None, "max_completion_tokens": None}
    clamped = 0
    for point in used.iter_rows(named=True):
        point_dir = directory / point["run_dir"]
        met = point["slo_met"]
        if rejudged:
            run = load_run(point_dir, columns=ANALYSIS_COLUMNS)
            met = summarize(run, slos=slos).targets[summary.target].all.slos_met
        judged.append((float(point["offered_rps"]), met is True and not point["saturation"]))
        point_manifest = RunDir(point_dir).read_manifest()  # the lengths it asked for: are they the log's?
        if point_manifest is not None:
            if point_manifest.selection is not None:
                bounds = {name: getattr(point_manifest.selection, name) for name in bounds}
            if point_manifest.counts is not None:
                clamped += point_manifest.counts.clamped_requests or 0
    capacity, high = capacity_of(judged)
    manifest = RunDir(directory).read_manifest_json() or {}
    config: dict[str, Any] = next((t for t in manifest.get("targets") or [] if t.get("name") == summary.target), {})
    recorded = config.get("gpus_per_replica")
    return ReplicaCapacity(
        sweep=str(directory),
        target=summary.target,
        shape=summary.shape,
        slos=wanted,
        point_s=summary.duration_s,
        slo_capacity_rps=capacity,
        bracket_high_rps=high,
        points=used.height,
        repeats=len(summary.repeats),
        outliers=curve.height - used.height,
        rejudged=rejudged,
        gpus_per_replica=gpus_per_replica if gpus_per_replica is not None else recorded,
        target_config=config,
        length_bounds=bounds,
        clamped_requests=clamped,
    )
