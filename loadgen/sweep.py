"""Load sweeps: a series of runs at rising load, drawing requests from a traffic log's own
prompt/output mix, until the server saturates; then bisection for the highest load that meets
every SLO (the replica's SLO capacity).

Each load point is a complete run directory (results, manifest) under SWEEP_DIR/points/, so every
figure of the curve is traceable to its rows and can be recomputed with `shadowreplay report`.
The curve's figures come from analysis/summary/run_summary.py, the one place metrics are defined.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from shadowreplay.analysis.data.run_data import load_run
from shadowreplay.analysis.data.telemetry_data import load_telemetry
from shadowreplay.analysis.metrics.slo import Slo, format_slos
from shadowreplay.analysis.summary.models import CurvePoint, SweepSummary
from shadowreplay.analysis.summary.run_summary import summarize
from shadowreplay.errors import ShadowReplayError
from shadowreplay.loadgen.shapes import FixedConcurrency, LoadShape, Poisson
from shadowreplay.replay.run.plan import LengthClamp, build_plan
from shadowreplay.replay.run.runner import RunOutcome, RunSettings, run_plan
from shadowreplay.replay.run.session import Session
from shadowreplay.replay.schemas.manifest import Counts, Manifest, SweepPoint
from shadowreplay.replay.schemas.run_dir import CURVE_NAME, RunDir, SweepDir, write_text_atomically


class SweepError(ShadowReplayError, ValueError):
    """A sweep that cannot measure what it was asked to (the message names the load point)."""


CURVE_SCHEMA = pa.schema(
    [
        ("point", pa.int32()),
        ("phase", pa.string()),  # "ramp" (the rising series) or "bisect"
        ("shape", pa.string()),
        ("offered_rps", pa.float64()),
        ("concurrency", pa.int32()),
        ("requests", pa.int64()),
        ("achieved_rps", pa.float64()),
        ("output_tokens_per_s", pa.float64()),
        ("ttft_p50_ms", pa.float64()),
        ("ttft_p95_ms", pa.float64()),
        ("tpot_p95_ms", pa.float64()),
        ("e2e_p95_ms", pa.float64()),
        ("error_rate", pa.float64()),
        ("gpu_util_mean_pct", pa.float64()),  # NVML, over the point's steady window (null without GPUs)
        ("joules_per_output_token", pa.float64()),
        ("slo_met", pa.bool_()),
        ("run_dir", pa.string()),
    ]
)


@dataclass(frozen=True)
class SweepSettings:
    shape: Literal["poisson", "concurrency"]
    start: float  # requests/s (poisson) or users (concurrency)
    stop: float
    points: int = 6  # load points of the rising series, geometric from start to stop
    duration_s: float = 20.0  # of each load point
    slos: tuple[Slo, ...] = ()
    bisect_steps: int = 3
    seed: int = 0
    clamp: LengthClamp = field(default_factory=LengthClamp)
    saturation_gain: float = 0.05  # throughput rising by less than this fraction: saturated
    max_error_rate: float = 0.10  # errors above this fraction: saturated
    warmup_fraction: float = 0.10
    busy_poll: bool = False  # the workers' event loops poll without sleeping (replay_worker.WorkerSettings)

    def levels(self) -> list[float]:
        if self.points == 1:
            return [self.start]
        levels = np.geomspace(self.start, self.stop, self.points)
        if self.shape == "concurrency":
            return sorted({max(1, round(x)) for x in levels})
        return [float(x) for x in levels]


@dataclass
class SweepOutcome:
    curve: list[dict]
    saturation: dict | None  # the first point that showed saturation, and why
    slo_capacity: float | None  # highest load meeting every SLO (None: none met, or no SLO given)


def sample_mix(rows: pa.Table, count: int, rng: np.random.Generator, prefix: str) -> pa.Table:
    """`count` requests drawn (with replacement) from the log's rows, with fresh request ids."""
    picked = rows.take(pa.array(rng.integers(0, rows.num_rows, size=count)))
    ids = [f"{prefix}-{i:06d}-{rid}" for i, rid in enumerate(picked.column("request_id").to_pylist())]
    picked = picked.set_column(picked.schema.get_field_index("request_id"), "request_id", pa.array(ids, pa.string()))
    # Sessions would serialise requests of one conversation; a load point measures the server.
    return picked.set_column(picked.schema.get_field_index("session_id"), "session_id", pa.nulls(count, pa.string()))


class LoadSweep:
    """Runs the sweep; `run_point` is the runner (injectable for tests of the search logic)."""

    def __init__(
        self,
        rows: pa.Table,
        session: Session,
        settings: SweepSettings,
        sweep_dir: Path,
        on_point: Callable[[dict], None] | None = None,
    ):
        """`session`: the entered Session of the sweep (its target, with any vLLM server it started,
        whose /metrics every load point scrapes; GPUs are sampled on every GPU node of its Ray cluster)."""
        if len(session.targets) != 1:
            raise ValueError("a sweep measures one target at a time")
        self.session = session
        self.rows = rows
        self.targets = session.targets
        self.settings = settings
        self.sweep_dir = sweep_dir
        self.layout = SweepDir(sweep_dir)
        self.on_point = on_point
        self.curve: list[dict] = []

    def run(self) -> SweepOutcome:
        s = self.settings
        saturation = None
        previous = None
        for level in s.levels():
            point = self._measure(level, "ramp")
            reason = self._saturated(point, previous)
            if reason:
                saturation = {"point": point["point"], "level": level, "reason": reason}
                break
            previous = point
        capacity = self._bisect() if s.slos else None
        self._write(saturation, capacity)
        return SweepOutcome(self.curve, saturation, capacity)

    def _saturated(self, point: dict, previous: dict | None) -> str | None:
        s = self.settings
        if point["error_rate"] > s.max_error_rate:
            return f"error rate {point['error_rate']:.1%} above {s.max_error_rate:.0%}"
        if previous is not None and previous["output_tokens_per_s"] > 0:
            gain = point["output_tokens_per_s"] / previous["output_tokens_per_s"] - 1
            if gain < s.saturation_gain:
                return f"throughput rose {gain:+.1%} over the previous point (under {s.saturation_gain:.0%})"
        return None

    def _bisect(self) -> float | None:
        """Highest load meeting every SLO: between the last point that met them and the first that
        did not, by bisection (geometric for rates, integer for users)."""
        met = [p for p in self.curve if p["slo_met"]]
        if not met:
            return None
        lo = max(self._level(p) for p in met)
        failing = [self._level(p) for p in self.curve if not p["slo_met"] and self._level(p) > lo]
        if not failing:
            return lo
        hi = min(failing)
        for _ in range(self.settings.bisect_steps):
            if self.settings.shape == "concurrency":
                if hi - lo <= 1:
                    break
                mid = (lo + hi) // 2
            else:
                mid = math.sqrt(lo * hi)
            if self._measure(mid, "bisect")["slo_met"]:
                lo = mid
            else:
                hi = mid
        return lo

    def _level(self, point: dict) -> float:
        return point["concurrency"] if self.settings.shape == "concurrency" else point["offered_rps"]

    def shape_for(self, level: float) -> LoadShape:
        s = self.settings
        if s.shape == "concurrency":
            return FixedConcurrency(users=int(level), duration_s=s.duration_s)
        return Poisson(rate=level, duration_s=s.duration_s, seed=s.seed + len(self.curve))

    def _measure(self, level: float, phase: Literal["ramp", "bisect"]) -> dict:
        s = self.settings
        index = len(self.curve)
        label = f"{int(level)}users" if s.shape == "concurrency" else f"{level:.3g}rps"
        point_dir = self.layout.point(index, label)
        run_dir = point_dir.path
        rng = np.random.default_rng(s.seed + index)
        shape = self.shape_for(level)
        if isinstance(shape, FixedConcurrency):
            # Enough requests for the users to stay busy for the whole duration, at any speed.
            count = max(shape.users * 4, int(len(self.rows) if len(self.rows) < 10_000 else 10_000))
            times = np.zeros(count)
            settings = RunSettings(
                run_dir=run_dir, concurrency=shape.users, duration_s=s.duration_s, busy_poll=s.busy_poll
            )
        else:
            times = np.fromiter(shape.send_times(), dtype=float)
            settings = RunSettings(run_dir=run_dir, busy_poll=s.busy_poll)
        if len(times) == 0:
            raise SweepError(f"load point {label}: the shape yields no request in {s.duration_s:g} s")
        mix = sample_mix(self.rows, len(times), rng, prefix=f"p{index:02d}")
        plan = build_plan(mix, times, s.clamp)
        outcome = self._run_with_telemetry(plan, settings, point_dir)
        self.session.write_manifest(
            point_dir,
            Manifest(
                run_id=outcome.run_id,
                status="completed",
                epoch=outcome.epoch,
                wall_s=outcome.wall_s,
                sweep_point=SweepPoint(index=index, phase=phase, shape=asdict(shape) | {"kind": type(shape).__name__}),
                targets=[t.public_dict() for t in self.targets],
                workers=outcome.workers,
                busy_poll=s.busy_poll,
                clock_offsets={w["worker"]: w["wall_minus_perf"] for w in outcome.workers},
                counts=Counts(requests=plan.num_rows, rows_by_status=outcome.by_status),
                telemetry=outcome.telemetry,
            ),
        )
        summary = summarize(
            load_run(run_dir), slos=s.slos, warmup_fraction=s.warmup_fraction, telemetry=load_telemetry(run_dir)
        )
        stats = summary.targets[self.targets[0].name].all
        latency = stats.latency_ms
        gpu = summary.gpu
        measured = gpu.get("status") == "measured"
        point = CurvePoint(
            point=index,
            phase=phase,
            shape=s.shape,
            offered_rps=float(level) if s.shape == "poisson" else None,
            concurrency=int(level) if s.shape == "concurrency" else None,
            requests=stats.requests,
            achieved_rps=stats.throughput.requests_per_s,
            output_tokens_per_s=stats.throughput.output_tokens_per_s,
            ttft_p50_ms=latency["ttft"].p50,
            ttft_p95_ms=latency["ttft"].p95,
            tpot_p95_ms=latency["tpot"].p95,
            e2e_p95_ms=latency["e2e"].p95,
            error_rate=stats.error_rate,
            gpu_util_mean_pct=gpu["gpu_util_pct"]["mean"] if measured else None,
            joules_per_output_token=gpu["energy"]["joules_per_output_token"] if measured else None,
            slo_met=bool(stats.slos_met) if s.slos else None,
            run_dir=self.layout.relative(point_dir),
        ).model_dump()
        self.curve.append(point)
        if self.on_point:
            self.on_point(point)
        return point

    def _run_with_telemetry(self, plan: pa.Table, settings: RunSettings, point_dir: RunDir) -> RunOutcome:
        """One load point's run with the same telemetry a replay has: vLLM's /metrics of the started
        servers, and NVML on every GPU node of the Ray cluster (a line saying it is off, once)."""
        samplers = self.session.telemetry_samplers(settings.run_id, point_dir)
        if not ray.is_initialized():
            return run_plan(plan, self.targets, settings, samplers=samplers)
        with self.session.gpu_samplers(settings.run_id, point_dir, report_once=True) as gpus:
            return run_plan(plan, self.targets, settings, samplers=samplers, gpu_samplers=gpus)

    def _write(self, saturation: dict | None, capacity: float | None) -> None:
        pq.write_table(pa.Table.from_pylist(self.curve, schema=CURVE_SCHEMA), self.layout.curve_path)
        unit = "users" if self.settings.shape == "concurrency" else "rps"
        summary = SweepSummary.model_validate(
            {
                "target": self.targets[0].name,
                "shape": self.settings.shape,
                "levels": self.settings.levels(),
                "duration_s": self.settings.duration_s,
                "slos": format_slos(self.settings.slos) if self.settings.slos else None,
                "saturation": saturation,
                f"slo_capacity_{unit}": capacity,
                "points": len(self.curve),
                "curve": CURVE_NAME,
                "servers": self.session.servers or None,
            }
        )
        write_text_atomically(self.layout.summary_path, json.dumps(summary.json_dict(), indent=2) + "\n")
