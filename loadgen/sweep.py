"""Load sweeps: a series of runs at rising load, drawing requests from a traffic log's own
prompt/output mix, until the server saturates; then bisection for the highest load that meets
every SLO (the replica's SLO capacity). A point's load is a Poisson rate (requests drawn at random
from the log), the log's own arrival pattern scaled to a rate (`trace`: its bursts kept, each
arrival with its own request; loadgen/shapes.py TracePattern), or closed-loop users.

Saturation is judged at each point by named criteria (CRITERIA; each that fires is recorded with
its figures): `errors` (error rate above the limit), `follow` (open loop: achieved requests/s below a
fraction of those sent, lag for lag), `latency` (TTFT p95 a factor above the
lowest-load point's) and `throughput` (output tokens/s not rising above the earlier peak). A curve
that contradicts itself is measured again, once per point (`SweepSearch`): a saturated point
before the ramp stops, and a point that missed the SLOs (or saturated) below one that met them.
A repeat that does not reproduce its point marks that point an outlier (shown, not used); the SLO
capacity is never at or above a point that missed and was not found an outlier.

Each load point is a complete run directory (results, manifest) under SWEEP_DIR/points/, so every
figure of the curve is traceable to its rows and can be recomputed with `shadowreplay report`.
The curve's figures come from analysis/summary/run_summary.py, the one place metrics are defined.

A sweep that was killed or interrupted is taken up again (`LoadSweep(resume=True)`, `sweep --resume`):
the search is run again from its first point with the settings the sweep's manifest recorded, and a
point whose run directory finished (its manifest `completed`, the same index, phase and shape) is read
back from its rows instead of measured: the search sees the same figures and takes the same path,
because every point's requests and arrivals follow from the seed and its index. A point that did not
finish is set aside under SWEEP_DIR/discarded/ and measured again from scratch.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from shadowreplay.analysis.data.run_data import ANALYSIS_COLUMNS, load_run
from shadowreplay.analysis.data.telemetry_data import load_telemetry
from shadowreplay.analysis.metrics.slo import Slo, format_slos, parse_slos
from shadowreplay.analysis.summary.models import CurvePoint, SweepSummary
from shadowreplay.analysis.summary.run_summary import summarize
from shadowreplay.errors import ShadowReplayError
from shadowreplay.loadgen.shapes import FixedConcurrency, LoadShape, Poisson, TracePattern, shape_record
from shadowreplay.replay.run.plan import LengthClamp, build_plan
from shadowreplay.replay.run.replay_session import length_counts
from shadowreplay.replay.run.runner import RunOutcome, RunSettings, run_plan
from shadowreplay.replay.run.session import Session
from shadowreplay.replay.schemas.contract import stamp
from shadowreplay.replay.schemas.manifest import Counts, Manifest, Selection, SweepPoint
from shadowreplay.replay.schemas.run_dir import CURVE_NAME, RunDir, RunDirError, SweepDir, write_text_atomically


class SweepError(ShadowReplayError, ValueError):
    """A sweep that cannot measure what it was asked to (the message names the load point)."""


CURVE_KIND = "sweep_curve"
CURVE_VERSION = 2
"""2 added sent_rps, kept_rps, saturation, repeat_of and outlier (readers fill them in for version-1 curves)."""

CURVE_SCHEMA = pa.schema(
    [
        ("point", pa.int32()),
        ("phase", pa.string()),  # "ramp" (the rising series), "bisect" or "repeat" (a point measured again)
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
        ("sent_rps", pa.float64()),  # Poisson: requests scheduled in the steady window / its length
        ("kept_rps", pa.float64()),  # Poisson: ok requests done in that window shifted by the median e2e / its length
        ("saturation", pa.string()),  # the criteria that fired at this point, comma-separated (null: none)
        ("repeat_of", pa.int32()),  # the point this row measures again (null: a first measurement)
        ("outlier", pa.bool_()),  # a point its repeat contradicted: shown, not used
    ],
    metadata=stamp(CURVE_KIND, CURVE_VERSION),
)


@dataclass(frozen=True)
class SweepSettings:
    shape: Literal["poisson", "trace", "concurrency"]
    start: float  # requests/s (poisson, trace) or users (concurrency)
    stop: float
    points: int = 6  # load points of the rising series, geometric from start to stop
    duration_s: float = 20.0  # of each load point
    slos: tuple[Slo, ...] = ()
    bisect_steps: int = 3
    seed: int = 0
    clamp: LengthClamp = field(default_factory=LengthClamp)
    # Saturation criteria (CRITERIA): each that fires at a point is recorded with its figures.
    saturation_gain: float = 0.05  # throughput: output tokens/s rising less than this over the earlier peak
    max_error_rate: float = 0.10  # errors: error rate above this fraction
    follow_ratio: float = 0.90  # follow (Poisson): kept_rps under this fraction of sent_rps ...
    follow_min_shortfall: float = 5.0  # ... and that many requests of the point short or more
    latency_factor: float = 10.0  # latency: TTFT p95 above this many times the lowest-load point's ...
    latency_floor_ms: float = 100.0  # ... taken as at least this many ms (a fast server's 5 ms is no baseline)
    recheck: bool = True  # measure a contradicted point once more (SweepSearch)
    warmup_fraction: float = 0.10
    busy_poll: bool = False  # the workers' event loops poll without sleeping (replay_worker.WorkerSettings)

    @property
    def open_loop(self) -> bool:
        """Whether a point offers a rate (Poisson arrivals, or the log's own pattern) rather than users."""
        return self.shape != "concurrency"

    def record(self) -> dict[str, Any]:
        """The settings as a sweep's manifest keeps them for `sweep --resume` (SLOs as their text)."""
        record = asdict(self)
        record["slos"] = format_slos(self.slos) if self.slos else None
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SweepSettings:
        """The settings `record()` wrote (a manifest's resume.sweep.settings)."""
        fields = dict(record)
        fields["slos"] = parse_slos(fields["slos"]) if fields.get("slos") else ()
        fields["clamp"] = LengthClamp(**fields.get("clamp") or {})
        return cls(**fields)

    def levels(self) -> list[float]:
        if self.points == 1:
            return [self.start]
        levels = np.geomspace(self.start, self.stop, self.points)
        if self.shape == "concurrency":
            return sorted({max(1, round(x)) for x in levels})
        return [float(x) for x in levels]


# ---- saturation criteria ---------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """A saturation criterion that fired at a point, with the figure and the limit it passed."""

    criterion: str
    value: float
    limit: float
    text: str


@dataclass(frozen=True)
class Reference:
    """What a point is judged against: the lowest-load point and the highest-throughput point of
    the rising series measured below it (outliers left out; None when there is none)."""

    baseline: dict | None
    peak: dict | None


class Criterion(Protocol):
    @property
    def name(self) -> str: ...

    def check(self, point: dict, reference: Reference) -> Finding | None: ...


@dataclass(frozen=True)
class ErrorRate:
    """errors: the point's error rate above `limit`."""

    limit: float
    name: str = "errors"

    def check(self, point: dict, reference: Reference) -> Finding | None:
        rate = point["error_rate"]
        if rate is None or rate <= self.limit:
            return None
        return Finding(self.name, rate, self.limit, f"error rate {rate:.1%} above {self.limit:.0%}")


@dataclass(frozen=True)
class Follow:
    """follow (Poisson only): the requests done, lag for lag, below `ratio` x those sent in the
    steady window (`kept_rps` / `sent_rps`; achieved / offered when a curve lacks them): the server
    no longer keeps up with the offered load. The shortfall must also come to `min_shortfall`
    requests of the point (a window of ten requests is one or two short by chance at its edges)."""

    ratio: float
    min_shortfall: float = 5.0
    name: str = "follow"

    def check(self, point: dict, reference: Reference) -> Finding | None:
        sent, kept = point.get("sent_rps"), point.get("kept_rps")
        if sent is None or kept is None:
            sent, kept = point["offered_rps"], point["achieved_rps"]
        if not sent or kept is None:
            return None
        followed = kept / sent
        if followed >= self.ratio or (1 - followed) * point["requests"] < self.min_shortfall:
            return None
        return Finding(
            self.name,
            followed,
            self.ratio,
            f"{kept:.3g} req/s done of the {sent:.3g} req/s sent ({followed:.0%}, under {self.ratio:.0%})",
        )


@dataclass(frozen=True)
class LatencyRise:
    """latency: TTFT p95 above `factor` x the lowest-load point's TTFT p95 (at least `floor_ms`)."""

    factor: float
    floor_ms: float
    name: str = "latency"

    def check(self, point: dict, reference: Reference) -> Finding | None:
        base = reference.baseline
        ttft = point["ttft_p95_ms"]
        if base is None or ttft is None or base["ttft_p95_ms"] is None:
            return None
        baseline = max(base["ttft_p95_ms"], self.floor_ms)
        rise = ttft / baseline
        if rise <= self.factor:
            return None
        return Finding(
            self.name,
            rise,
            self.factor,
            f"TTFT p95 {ttft:,.0f} ms is {rise:.1f}x the lowest load's {baseline:,.0f} ms "
            f"(point {base['point']}; over {self.factor:g}x)",
        )


@dataclass(frozen=True)
class ThroughputPeak:
    """throughput: output tokens/s less than (1 + `gain`) x the peak of the rising series below."""

    gain: float
    name: str = "throughput"

    def check(self, point: dict, reference: Reference) -> Finding | None:
        peak = reference.peak
        tokens = point["output_tokens_per_s"]
        if peak is None or tokens is None or not peak["output_tokens_per_s"]:
            return None
        rose = tokens / peak["output_tokens_per_s"] - 1
        if rose >= self.gain:
            return None
        return Finding(
            self.name,
            rose,
            self.gain,
            f"output {tokens:,.0f} tok/s is {rose:+.1%} against the peak {peak['output_tokens_per_s']:,.0f} tok/s "
            f"of point {peak['point']} (under {self.gain:+.0%})",
        )


def criteria(settings: SweepSettings) -> tuple[Criterion, ...]:
    """The saturation criteria of a sweep, in the order they are reported."""
    found: list[Criterion] = [ErrorRate(settings.max_error_rate)]
    if settings.open_loop:  # closed-loop users cannot outrun the server: nothing to follow
        found.append(Follow(settings.follow_ratio, settings.follow_min_shortfall))
    found += [LatencyRise(settings.latency_factor, settings.latency_floor_ms), ThroughputPeak(settings.saturation_gain)]
    return tuple(found)


CRITERIA = ("errors", "follow", "latency", "throughput")


def criteria_limits(settings: SweepSettings) -> dict[str, float]:
    """The criteria's limits as summary.json records them."""
    limits = {"max_error_rate": settings.max_error_rate}
    if settings.open_loop:
        limits["follow_ratio"] = settings.follow_ratio
        limits["follow_min_shortfall"] = settings.follow_min_shortfall
    return limits | {
        "latency_factor": settings.latency_factor,
        "latency_floor_ms": settings.latency_floor_ms,
        "throughput_gain": settings.saturation_gain,
    }


# ---- the search ------------------------------------------------------------------------------


Phase = Literal["ramp", "bisect", "repeat"]


class PointMeasurer(Protocol):
    def __call__(self, index: int, level: float, phase: Phase, repeat_of: int | None) -> dict:
        """Measure load point `index` at `level`; its CurvePoint as a dict."""
        ...


@dataclass
class SweepOutcome:
    curve: list[dict]
    saturation: dict | None  # the first point that showed saturation (confirmed), and why
    slo_capacity: float | None  # highest load meeting every SLO (None: none met, or no SLO given)
    repeats: list[dict] = field(default_factory=list)  # points measured again, and what the repeat said


class SweepSearch:
    """The sweep's logic over an injectable point measurer: the rising series to saturation, the
    repeats of contradicted points, and the bisection for the SLO capacity.

    - Ramp: each level of `settings.levels()` is measured and judged by every criterion against
      the rising series below it. A saturated point is measured once more (`recheck`; not when every
      request failed): if the repeat saturates too the ramp stops there; if not, the point is an
      outlier and the ramp goes on.
    - Repeats: a ramp point that missed the SLOs (or saturated) below a point that met them is
      measured once more, lowest first; a repeat that meets marks it an outlier, one that misses
      confirms it (and no point above it can set the capacity: the search stops repeating).
    - SLO capacity: the highest level that met every SLO without saturating, below the lowest
      level that did not (outliers left out), refined by bisection towards that level.
    """

    def __init__(
        self,
        settings: SweepSettings,
        measure: PointMeasurer,
        on_point: Callable[[dict], None] | None = None,
        on_note: Callable[[str], None] | None = None,
    ):
        self.settings = settings
        self.measure = measure
        self.on_point = on_point
        self.on_note = on_note
        self.criteria = criteria(settings)
        self.curve: list[dict] = []
        self.findings: dict[int, list[Finding]] = {}
        self.repeats: list[dict] = []

    def run(self) -> SweepOutcome:
        saturation = self._ramp()
        if self.settings.slos and self.settings.recheck:
            self._recheck_misses()
        capacity = self._bisect() if self.settings.slos else None
        return SweepOutcome(self.curve, saturation, capacity, self.repeats)

    # -- judging -------------------------------------------------------------------------------
    def level(self, point: dict) -> float:
        return point["concurrency"] if self.settings.shape == "concurrency" else point["offered_rps"]

    def reference(self, level: float, with_peak: bool) -> Reference:
        below = [
            p for p in self.curve if p["phase"] in ("ramp", "repeat") and not p["outlier"] and self.level(p) < level
        ]
        if not below:
            return Reference(None, None)
        baseline = min(below, key=lambda p: (self.level(p), p["point"]))
        peak = max(below, key=lambda p: p["output_tokens_per_s"] or 0.0) if with_peak else None
        return Reference(baseline, peak)

    def judge(self, point: dict) -> list[Finding]:
        """Every criterion that fires at `point` (bisection points are not held to the throughput
        peak: their loads lie a few percent apart by design)."""
        reference = self.reference(self.level(point), with_peak=point["phase"] != "bisect")
        return [f for c in self.criteria if (f := c.check(point, reference)) is not None]

    def holds(self, point: dict) -> bool:
        """The point met every SLO and did not saturate: a load the replica serves."""
        return point["slo_met"] is True and not point["saturation"]

    def _take(self, level: float, phase: Phase, repeat_of: int | None = None) -> dict:
        index = len(self.curve)
        point = self.measure(index, level, phase, repeat_of)
        findings = self.judge(point)
        point["saturation"] = ",".join(f.criterion for f in findings) or None
        point["outlier"] = False
        self.curve.append(point)
        self.findings[index] = findings
        if self.on_point:
            self.on_point(point)
        return point

    def _note(self, text: str) -> None:
        if self.on_note:
            self.on_note(text)

    def _level_text(self, level: float) -> str:
        return f"{int(level)} users" if self.settings.shape == "concurrency" else f"{level:.3g} req/s"

    def _repeat(self, point: dict, why: Literal["saturated", "missed"]) -> dict:
        """Measure `point` again; the repeat's verdict recorded (and `point` marked an outlier when
        the repeat does not reproduce it)."""
        level = self.level(point)
        what = f"saturated ({point['saturation']})" if why == "saturated" else "missed the SLOs"
        if why == "missed" and point["saturation"]:
            what = f"missed the SLOs and saturated ({point['saturation']})"
        self._note(
            f"point {point['point']} ({self._level_text(level)}) {what}"
            + (", below a point that met them" if why == "missed" else "")
            + f"; measuring it again as point {len(self.curve)}"
        )
        repeat = self._take(level, "repeat", repeat_of=point["point"])
        reproduced = bool(repeat["saturation"]) if why == "saturated" else not self.holds(repeat)
        if reproduced:
            verdict = "confirmed"
            text = f"repeat point {repeat['point']} confirms point {point['point']}: {self._describe(repeat)}"
        else:
            verdict = "outlier"
            point["outlier"] = True
            text = (
                f"repeat point {repeat['point']} {self._describe(repeat)}: point {point['point']} was an outlier "
                "(both are shown; the repeat is used)"
            )
        self._note(text)
        self.repeats.append(
            {"point": point["point"], "repeat": repeat["point"], "level": level, "why": why, "verdict": verdict}
            | {"text": text}
        )
        return repeat

    def _describe(self, point: dict) -> str:
        parts = [f"saturated ({point['saturation']})" if point["saturation"] else "not saturated"]
        if point["slo_met"] is not None:
            parts.append("met the SLOs" if point["slo_met"] else "missed the SLOs")
        return ", ".join(parts)

    # -- phases --------------------------------------------------------------------------------
    def _ramp(self) -> dict | None:
        for level in self.settings.levels():
            point = self._take(level, "ramp")
            if not point["saturation"]:
                continue
            confirmed_by = None
            if self.settings.recheck and point["error_rate"] != 1.0:  # every request failed: no chance result
                repeat = self._repeat(point, "saturated")
                if point["outlier"]:
                    continue
                confirmed_by = repeat["point"]
            findings = self.findings[point["point"]]
            return {
                "point": point["point"],
                "level": float(level),
                "reason": "; ".join(f"{f.criterion}: {f.text}" for f in findings),
                "criteria": [asdict(f) for f in findings],
                "confirmed_by": confirmed_by,
            }
        return None

    def _recheck_misses(self) -> None:
        repeated = {r["point"] for r in self.repeats}
        ramp = sorted(
            (p for p in self.curve if p["phase"] == "ramp" and not p["outlier"]),
            key=lambda p: (self.level(p), p["point"]),
        )
        for point in ramp:
            if self.holds(point) or point["point"] in repeated:
                continue
            level = self.level(point)
            if not any(self.holds(q) and self.level(q) > level for q in self.curve if not q["outlier"]):
                continue
            self._repeat(point, "missed")
            if not point["outlier"]:
                return  # a confirmed miss: nothing above it can set the capacity

    def _bisect(self) -> float | None:
        """Highest load meeting every SLO without saturating, below the lowest load that did not
        (outliers left out), refined by bisection (geometric for rates, integer for users)."""
        used = [p for p in self.curve if not p["outlier"]]
        failing = [self.level(p) for p in used if not self.holds(p)]
        ceiling = min(failing) if failing else math.inf
        met = [self.level(p) for p in used if self.holds(p) and self.level(p) < ceiling]
        if not met:
            return None
        lo = max(met)
        if not failing:
            return lo
        hi = ceiling
        for _ in range(self.settings.bisect_steps):
            if self.settings.shape == "concurrency":
                if hi - lo <= 1:
                    break
                mid: float = (int(lo) + int(hi)) // 2
            else:
                mid = math.sqrt(lo * hi)
            if self.holds(self._take(mid, "bisect")):
                lo = mid
            else:
                hi = mid
        return lo


def sample_mix(rows: pa.Table, count: int, rng: np.random.Generator, prefix: str) -> pa.Table:
    """`count` requests drawn (with replacement) from the log's rows, with fresh request ids."""
    return with_fresh_ids(rows.take(pa.array(rng.integers(0, rows.num_rows, size=count))), prefix)


def with_fresh_ids(picked: pa.Table, prefix: str) -> pa.Table:
    """A load point's requests taken from the log's rows: each a fresh request id (`prefix`, its position,
    the logged id), and no session, so a row taken twice is two requests."""
    count = picked.num_rows
    ids = [f"{prefix}-{i:06d}-{rid}" for i, rid in enumerate(picked.column("request_id").to_pylist())]
    picked = picked.set_column(picked.schema.get_field_index("request_id"), "request_id", pa.array(ids, pa.string()))
    # Sessions would serialise requests of one conversation; a load point measures the server.
    return picked.set_column(picked.schema.get_field_index("session_id"), "session_id", pa.nulls(count, pa.string()))


def follow_rates(final_rows: pl.LazyFrame, window: Any, e2e_p50_ms: float | None) -> tuple[float | None, float | None]:
    """(sent_rps, kept_rps) of an open-loop point: the final requests scheduled in the steady
    window / its length, and the ok requests done in that window shifted later by the point's
    median e2e latency / its length. A server that keeps up completes, lag for lag, what was sent
    (kept = sent x (1 - error rate)) however long its requests take against the warm-up; one that
    does not completes at its own rate. (None, None) without a steady window."""
    if window.kind != "steady" or window.duration_s <= 0:
        return None, None
    lag_s = (e2e_p50_ms or 0.0) / 1000.0
    sent, kept = (
        final_rows.select(
            pl.col("scheduled_s").is_between(window.start_s, window.end_s).sum(),
            (
                (pl.col("status") == "ok") & pl.col("done_s").is_between(window.start_s + lag_s, window.end_s + lag_s)
            ).sum(),
        )
        .collect(engine="streaming")
        .row(0)
    )
    return sent / window.duration_s, kept / window.duration_s


class LoadSweep:
    """Runs the sweep: SweepSearch's logic, each point a real run (`_measure`) under SWEEP_DIR/points/."""

    def __init__(
        self,
        rows: pa.Table,
        session: Session,
        settings: SweepSettings,
        sweep_dir: Path,
        on_point: Callable[[dict], None] | None = None,
        on_note: Callable[[str], None] | None = None,
        resume: bool = False,
    ):
        """`session`: the entered Session of the sweep (its target, with any vLLM server it started,
        whose /metrics every load point scrapes; GPUs are sampled on every GPU node of its Ray cluster).
        `on_point` sees each judged point, `on_note` each line about a repeat or a point read back.
        `resume`: take up a sweep that did not finish (the module docstring)."""
        if len(session.targets) != 1:
            raise ValueError("a sweep measures one target at a time")
        self.session = session
        if settings.shape == "trace":  # the log's own arrival order (TracePattern's offsets)
            rows = rows.sort_by("arrival_time")
        self.rows = rows
        self._offsets: np.ndarray | None = None
        self.targets = session.targets
        self.settings = settings
        self.sweep_dir = sweep_dir
        self.layout = SweepDir(sweep_dir)
        self.on_point = on_point
        self.on_note = on_note
        self.resume = resume
        self.curve: list[dict] = []
        self.reused: list[int] = []  # points read back from an earlier start's run directories
        self.discarded: list[str] = []  # unfinished points set aside (SWEEP_DIR/discarded/), measured again

    def run(self) -> SweepOutcome:
        search = SweepSearch(self.settings, self._measure, on_point=self.on_point, on_note=self.on_note)
        self.curve = search.curve
        outcome = search.run()
        self._write(outcome)
        return outcome

    def shape_for(self, level: float, index: int) -> LoadShape:
        """The load shape of point `index`: Poisson arrivals (a repeat draws its own arrivals and mix), or
        the log's own arrival pattern scaled to the point's rate (every point from the log's first arrival,
        so points differ by their rate alone; a repeat replays the same arrivals)."""
        s = self.settings
        if s.shape == "concurrency":
            return FixedConcurrency(users=int(level), duration_s=s.duration_s)
        if s.shape == "trace":
            return TracePattern(self._arrival_offsets(), rate=level, duration_s=s.duration_s)
        return Poisson(rate=level, duration_s=s.duration_s, seed=s.seed + index)

    def _arrival_offsets(self) -> np.ndarray:
        """The log's arrival times in seconds after its first, in the order of self.rows (sorted by arrival)."""
        if self._offsets is None:
            micros = self.rows.column("arrival_time").cast(pa.int64()).to_numpy()
            self._offsets = (micros - micros[0]) / 1e6
        return self._offsets

    def _measure(self, index: int, level: float, phase: Phase, repeat_of: int | None) -> dict:
        s = self.settings
        label = f"{int(level)}users" if s.shape == "concurrency" else f"{level:.3g}rps"
        point_dir = self.layout.point(index, label)
        shape = self.shape_for(level, index)
        sweep_point = SweepPoint(index=index, phase=phase, repeat_of=repeat_of, shape=shape_record(shape))
        if self.resume and point_dir.path.exists():
            if self._finished(point_dir, sweep_point):
                self.reused.append(index)
                if self.on_note:
                    self.on_note(
                        f"point {index} ({label}): finished in an earlier start, read back from {point_dir.path}"
                    )
                return self._point_of(index, level, phase, repeat_of, point_dir)
            self._set_aside(point_dir)
        self._run_point(index, label, shape, sweep_point, point_dir)
        return self._point_of(index, level, phase, repeat_of, point_dir)

    def _finished(self, point_dir: RunDir, sweep_point: SweepPoint) -> bool:
        """Whether `point_dir` holds the finished measurement of `sweep_point` (its manifest written
        `completed` after its run, for the same index, phase, repeat and shape, no request lost with a
        worker)."""
        try:
            manifest = point_dir.read_manifest()
        except RunDirError:
            return False
        return (
            manifest is not None
            and manifest.status == "completed"
            and not manifest.counts.rows_by_status.get("worker_lost")
            and manifest.sweep_point is not None
            and manifest.sweep_point.model_dump() == json.loads(sweep_point.model_dump_json())
        )

    def _set_aside(self, point_dir: RunDir) -> None:
        """Move an unfinished point's directory to SWEEP_DIR/discarded/ (kept, never read by the curve)."""
        discarded = self.sweep_dir / "discarded"
        discarded.mkdir(exist_ok=True)
        destination = discarded / point_dir.path.name
        turn = 1
        while destination.exists():
            turn += 1
            destination = discarded / f"{point_dir.path.name}.{turn}"
        shutil.move(point_dir.path, destination)
        self.discarded.append(self.layout.relative(RunDir(destination)))
        if self.on_note:
            self.on_note(f"point {point_dir.path.name} did not finish in an earlier start: set aside in {destination}")

    def _run_point(self, index: int, label: str, shape: LoadShape, sweep_point: SweepPoint, point_dir: RunDir) -> None:
        """Replay one load point into `point_dir`, its manifest written `completed` at the end."""
        s = self.settings
        run_dir = point_dir.path
        rng = np.random.default_rng(s.seed + index)
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
        prefix = f"p{index:02d}"
        if isinstance(shape, TracePattern):  # each arrival keeps its own request
            mix = with_fresh_ids(self.rows.take(pa.array(shape.rows())), prefix)
        else:
            mix = sample_mix(self.rows, len(times), rng, prefix=prefix)
        plan = build_plan(mix, times, s.clamp)
        outcome = self._run_with_telemetry(plan, settings, point_dir)
        clamped, raised = length_counts(point_dir)  # from the point's rows, as a replay counts them
        self.session.write_manifest(
            point_dir,
            Manifest(
                run_id=outcome.run_id,
                status="interrupted" if outcome.cancelled else "completed",
                cancelled=outcome.cancelled,
                epoch=outcome.epoch,
                wall_s=outcome.wall_s,
                sweep_point=sweep_point,
                targets=[t.public_dict() for t in self.targets],
                workers=outcome.workers,
                busy_poll=s.busy_poll,
                clock_offsets={w["worker"]: w["wall_minus_perf"] for w in outcome.workers},
                selection=Selection(
                    max_prompt_tokens=s.clamp.max_prompt_tokens,
                    max_completion_tokens=s.clamp.max_completion_tokens,
                    output_lengths=s.clamp.output_lengths,
                ),
                counts=Counts(
                    requests=plan.num_rows,
                    rows_by_status=outcome.by_status,
                    clamped_requests=clamped,
                    raised_requests=raised,
                ),
                telemetry=outcome.telemetry,
            ),
        )
        if outcome.cancelled:  # Ctrl-C: the sweep stops here (its manifest `interrupted`; --resume goes on)
            raise KeyboardInterrupt
        if lost := outcome.by_status.get("worker_lost", 0):
            print(
                f"sweep: point {index}: {lost} request(s) ended worker_lost (their worker died); "
                "a resumed sweep measures this point again",
                flush=True,
            )

    def _point_of(self, index: int, level: float, phase: Phase, repeat_of: int | None, point_dir: RunDir) -> dict:
        """The curve point of a measured load point, from its run directory's rows."""
        s = self.settings
        run_dir = point_dir.path
        run = load_run(run_dir, columns=ANALYSIS_COLUMNS)
        summary = summarize(run, slos=s.slos, warmup_fraction=s.warmup_fraction, telemetry=load_telemetry(run_dir))
        stats = summary.targets[self.targets[0].name].all
        latency = stats.latency_ms
        sent_rps, kept_rps = (
            follow_rates(run.final_scan, summary.window, latency["e2e"].p50) if s.open_loop else (None, None)
        )
        gpu = summary.gpu
        measured = gpu.get("status") == "measured"
        point = CurvePoint(
            point=index,
            phase=phase,
            shape=s.shape,
            offered_rps=float(level) if s.open_loop else None,
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
            sent_rps=sent_rps,
            kept_rps=kept_rps,
            repeat_of=repeat_of,
        ).model_dump()
        return point

    def _run_with_telemetry(self, plan: pa.Table, settings: RunSettings, point_dir: RunDir) -> RunOutcome:
        """One load point's run with the same telemetry a replay has: vLLM's /metrics of the started
        servers, and NVML on every GPU node of the Ray cluster (a line saying it is off, once)."""
        settings.worker_cpus = self.session.placement.loadgen_cpus  # off the local server's CPUs
        samplers = self.session.telemetry_samplers(settings.run_id, point_dir)
        if not ray.is_initialized():
            return run_plan(plan, self.targets, settings, samplers=samplers)
        with self.session.gpu_samplers(settings.run_id, point_dir, report_once=True) as gpus:
            return run_plan(plan, self.targets, settings, samplers=samplers, gpu_samplers=gpus)

    def _write(self, outcome: SweepOutcome) -> None:
        pq.write_table(pa.Table.from_pylist(outcome.curve, schema=CURVE_SCHEMA), self.layout.curve_path)
        unit = "users" if self.settings.shape == "concurrency" else "rps"
        summary = SweepSummary.model_validate(
            {
                "target": self.targets[0].name,
                "shape": self.settings.shape,
                "levels": self.settings.levels(),
                "duration_s": self.settings.duration_s,
                "slos": format_slos(self.settings.slos) if self.settings.slos else None,
                "saturation": outcome.saturation,
                f"slo_capacity_{unit}": outcome.slo_capacity,
                "points": len(outcome.curve),
                "curve": CURVE_NAME,
                "servers": self.session.servers or None,
                "repeats": outcome.repeats,
                "criteria": criteria_limits(self.settings),
                "reused_points": self.reused,
                "discarded_points": self.discarded,
            }
        )
        write_text_atomically(self.layout.summary_path, json.dumps(summary.json_dict(), indent=2) + "\n")
