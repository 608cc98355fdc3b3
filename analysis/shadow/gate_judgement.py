"""The judgement of a shadow: each gate of a gates file (analysis/shadow/gates_file.py) over the paired
measures (analysis/shadow/paired_requests.py), by an anytime-valid test (analysis/shadow/confidence_sequence.py).

Every gate reduces to the mean of one bounded value per request, compared with a threshold theta:
- A percentile bound `q_pNN <= max` holds when the share of requests above `max` is at most 1 - NN/100:
  value 1[q > max], theta = 1 - NN/100 (`min`: 1[q < min], theta = NN/100). Over the candidate's `ok`
  requests (latency), or the requests both sides answered (length ratio).
- A rate on the candidate alone (`max`, or `min` for accuracy and JSON validity): value 1[bad] (an error,
  a refusal, a truncation, a wrong or invalid answer), theta = max (or 1 - min).
- A rate against the baseline (`max_increase`, `max_drop`): the paired difference
  1[candidate bad] - 1[baseline bad] in [-1, 1], theta = the limit, plus the noise floor where an A/A copy
  ran: the mean of the same difference between the baseline's two copies, |mean(1[aa bad] - 1[baseline bad])|
  (a difference the baseline shows against itself is not the candidate's).
Populations: latency over the candidate's ok requests; errors over every request; refusals over answers;
truncation over ok answers; accuracy over requests with a reference (a failed request counts as wrong);
JSON validity over requests that asked for JSON or whose baseline answered JSON (no answer counts invalid).

Each gate is judged at alpha / (number of gates) (Bonferroni), the requests in the order their outcomes
became known (`known_s`):
- `fail`: a confidence sequence of the breach search (one from each window boundary) lay wholly above
  theta; `first_breach_s` is the moment it first did, on the replay's timeline (seconds from its start).
- `pass`: no breach, and the confidence sequence over the whole period ends wholly at or below theta.
- `inconclusive`: neither (too few requests to tell, or the candidate sits at the threshold).
The verdict is `pass` when every gate passes, else `fail` (an inconclusive gate has not shown it is safe).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, Field

from shadowreplay.analysis.metrics.table import percentile_key, percentiles_of
from shadowreplay.analysis.shadow.confidence_sequence import confidence_sequence, first_breach
from shadowreplay.analysis.shadow.gates_file import GatesFile, GateSpec
from shadowreplay.analysis.shadow.paired_requests import Sides

GATES_SCHEMA_VERSION = 1
EVIDENCE_IDS = 20
METHOD = (
    "predictable plug-in empirical-Bernstein confidence sequences (Waudby-Smith & Ramdas 2024, Theorem 2), one from "
    "each window boundary j at alpha_j = alpha_gate / ((j + 1)(j + 2)); alpha_gate = alpha / gates (Bonferroni)"
)
GateStatus = Literal["pass", "fail", "inconclusive"]


class Breach(BaseModel):
    """Where a failed gate's evidence first crossed its threshold."""

    at_s: float  # first_breach_s: on the replay's timeline
    since_s: float  # the start of the stretch whose confidence sequence showed it
    arrival_s: float | None  # the log's time of the request at the breach
    request_id: str
    lower: float  # the confidence sequence's lower bound there (above the threshold)
    alpha: float  # the level of that stretch's confidence sequence


class GateState(BaseModel):
    """A gate's state at the end of one reporting window (the whole-period confidence sequence so far)."""

    window: int
    end_s: float
    requests: int
    estimate: float | None
    lower: float | None
    upper: float | None
    status: GateStatus


class GateResult(BaseModel):
    name: str
    metric: str
    condition: str  # as a reader says it, e.g. "ttft_p95_ms <= 500"
    limit: float  # the limit as the gates file gives it (500 above)
    against_baseline: bool
    status: GateStatus
    first_breach_s: float | None
    breach: Breach | None = None
    judged: str  # what the test's mean is, e.g. "share of requests with ttft_ms > 500"
    threshold: float  # the limit on that mean (noise floor included)
    noise_floor: float | None = None
    requests: int  # the gate's population
    # The stretch the figures below are over: a failed gate's breach stretch (from its start to the end), else the
    # whole period (0). `estimate`: the plain mean over it; `interval`: its confidence sequence at the end (which
    # covers the lambda-weighted mean of the requests' conditional means, confidence_sequence.py: the plain mean's
    # where the candidate did not change within the stretch).
    judged_since_s: float
    estimate: float | None
    interval: tuple[float, float] | None
    alpha: float
    baseline: dict[str, float | None] = Field(default_factory=dict)  # the figures of each side
    candidate: dict[str, float | None] = Field(default_factory=dict)
    aa: dict[str, float | None] | None = None
    evidence: list[str] = Field(default_factory=list)  # request ids where the candidate did worse
    windows: list[GateState] = Field(default_factory=list)


class GatesReport(BaseModel):
    """DIR/gates.json."""

    schema_version: int = GATES_SCHEMA_VERSION
    verdict: Literal["pass", "fail"]
    reasons: list[str]
    baseline: str
    candidate: str
    aa: str | None
    alpha: float
    window_s: float
    method: str = METHOD
    requests: int  # requests paired (every side has a final row)
    gates: list[GateResult]
    prompt_format: dict[str, Any] | None = None  # per target: rejected requests, over context (prompt_format.json)

    @property
    def failed(self) -> list[GateResult]:
        return [gate for gate in self.gates if gate.status == "fail"]


@dataclass(frozen=True)
class _Series:
    """A gate's bounded values in the order they became known, with their times and request ids."""

    values: np.ndarray
    times: np.ndarray
    ids: np.ndarray
    scheduled: np.ndarray
    arrival: np.ndarray
    low: float
    high: float
    judged: str
    bad: np.ndarray  # where the candidate did worse (evidence)


def _bad_indicator(gate: GateSpec, prefix: str, scorer: int | None) -> pl.Expr:
    """1[bad] of one side for a rate gate (null outside the gate's population)."""
    quantity = gate.measure.quantity
    if quantity == "error_rate":
        return pl.col(f"{prefix}_error").cast(pl.Float64)
    if quantity == "refusal_rate":
        return pl.col(f"{prefix}_refusal").cast(pl.Float64)
    if quantity == "truncation_rate":
        return pl.when(pl.col(f"{prefix}_status") == "ok").then(pl.col(f"{prefix}_truncated").cast(pl.Float64))
    if quantity == "json_valid_rate":
        return pl.when(pl.col("json_expected")).then(
            1.0 - pl.col(f"{prefix}_json_valid").fill_null(False).cast(pl.Float64)
        )
    return 1.0 - pl.col(f"{prefix}_correct_{scorer}").cast(pl.Float64)  # accuracy: scorer k's correct_k


def _series(pairs: pl.DataFrame, gate: GateSpec, scorer: int | None) -> tuple[_Series, pl.Expr | None]:
    """The gate's values (module docstring) over its population, and for relative rate gates the A/A
    difference expression (for the noise floor)."""
    measure = gate.measure
    aa_difference: pl.Expr | None = None
    if measure.is_quantile:
        column = "length_ratio" if measure.family == "length_ratio" else f"c_{measure.quantity}_ms"
        limit = gate.limit_value
        beyond = pl.col(column) > limit if gate.limit == "max" else pl.col(column) < limit
        values: pl.Expr = pl.when(pl.col(column).is_not_null()).then(beyond.cast(pl.Float64))
        side = "" if measure.family == "length_ratio" else "the candidate's "
        judged = (
            f"share of {side}requests with {column.removeprefix('c_')} {'>' if gate.limit == 'max' else '<'} {limit:g}"
        )
        low, high = 0.0, 1.0
        bad = values
    elif gate.limit in ("max", "min"):
        values = _bad_indicator(gate, "c", scorer)
        judged = f"the candidate's share of {_bad_word(gate)} requests"
        low, high = 0.0, 1.0
        bad = values
    else:
        values = _bad_indicator(gate, "c", scorer) - _bad_indicator(gate, "b", scorer)
        judged = f"paired difference: candidate {_bad_word(gate)} minus baseline {_bad_word(gate)}, per request"
        low, high = -1.0, 1.0
        bad = values
        if "a_status" in pairs.columns:
            aa_difference = _bad_indicator(gate, "a", scorer) - _bad_indicator(gate, "b", scorer)
    frame = pairs.select(
        values.alias("value"),
        bad.alias("bad"),
        "known_s",
        "scheduled_s",
        "request_id",
        pl.col("arrival_s").cast(pl.Float64),
    ).filter(pl.col("value").is_not_null())
    return (
        _Series(
            frame.get_column("value").to_numpy(),
            frame.get_column("known_s").to_numpy(),
            frame.get_column("request_id").to_numpy(),
            frame.get_column("scheduled_s").to_numpy(),
            frame.get_column("arrival_s").to_numpy(),
            low,
            high,
            judged,
            frame.get_column("bad").to_numpy() > 0,
        ),
        aa_difference,
    )


def _bad_word(gate: GateSpec) -> str:
    return {
        "error_rate": "failed",
        "refusal_rate": "refused",
        "truncation_rate": "truncated",
        "json_valid_rate": "invalid-JSON",
        "accuracy": "wrong",
    }[gate.measure.quantity]


def _threshold(gate: GateSpec) -> float:
    measure = gate.measure
    if measure.is_quantile:
        assert measure.percentile is not None
        share = round(1.0 - measure.percentile / 100.0, 12)  # 0.05 for p95, not 0.050000000000000044
        return share if gate.limit == "max" else round(measure.percentile / 100.0, 12)
    if gate.limit == "min":
        return round(1.0 - gate.limit_value, 12)
    return gate.limit_value


def _side_figures(pairs: pl.DataFrame, gate: GateSpec, prefix: str, scorer: int | None) -> dict[str, float | None]:
    """The figures a reader compares for one side: a percentile (quantile gates) or a rate, and the count."""
    measure = gate.measure
    if measure.family == "latency":
        column = f"{prefix}_{measure.quantity}_ms"
        values = pairs.get_column(column).drop_nulls().to_numpy()
        assert measure.percentile is not None
        found = percentiles_of(values, [measure.percentile])
        return {percentile_key(measure.percentile): found[0] if found else None, "requests": float(len(values))}
    if measure.family == "length_ratio":  # a paired figure: shown on the candidate's side
        if prefix != "c":
            return {}
        ratios = pairs.get_column("length_ratio").drop_nulls().to_numpy()
        assert measure.percentile is not None
        found = percentiles_of(ratios, [measure.percentile])
        return {percentile_key(measure.percentile): found[0] if found else None, "requests": float(len(ratios))}
    indicator = pairs.select(_bad_indicator(gate, prefix, scorer).alias("bad")).get_column("bad").drop_nulls()
    if indicator.is_empty():
        return {"rate": None, "requests": 0.0}
    bad_rate = float(indicator.mean())  # type: ignore[arg-type]
    rate = 1.0 - bad_rate if measure.quantity in ("accuracy", "json_valid_rate") else bad_rate
    return {"rate": rate, "requests": float(len(indicator))}


def _judge(
    pairs: pl.DataFrame, gate: GateSpec, scorer: int | None, alpha: float, window_s: float, has_aa: bool
) -> GateResult:
    series, aa_difference = _series(pairs, gate, scorer)
    threshold = _threshold(gate)
    floor: float | None = None
    if aa_difference is not None:
        aa = pairs.select(aa_difference.alias("d")).get_column("d").drop_nulls()
        floor = abs(float(aa.mean())) if not aa.is_empty() else 0.0  # type: ignore[arg-type]
        threshold += floor
    n = len(series.values)
    breach = (
        first_breach(series.values, series.times, threshold, alpha, window_s, series.low, series.high) if n else None
    )
    whole = confidence_sequence(series.values, alpha, series.low, series.high)
    if breach is not None:
        status: GateStatus = "fail"
    elif n and whole.upper[-1] <= threshold:
        status = "pass"
    else:
        status = "inconclusive"
    if breach is not None:
        up_to_breach = slice(breach.start_index, breach.index + 1)
        evidence_ids = series.ids[up_to_breach][series.bad[up_to_breach]]
    else:
        evidence_ids = series.ids[series.bad]
    arrival = series.arrival[breach.index] if breach is not None else None
    # the figures of the stretch judged: the breach's (from its start to the end), else the whole period
    since = breach.start_index if breach is not None else 0
    stretch = series.values[since:]
    judged_cs = confidence_sequence(stretch, breach.alpha, series.low, series.high) if breach is not None else whole
    windows = _window_states(series, whole, threshold, window_s, breach.index if breach is not None else None)
    return GateResult(
        name=gate.name,
        metric=gate.metric,
        condition=gate.condition,
        limit=gate.limit_value,
        against_baseline=gate.against_baseline,
        status=status,
        first_breach_s=float(series.times[breach.index]) if breach is not None else None,
        breach=Breach(
            at_s=float(series.times[breach.index]),
            since_s=breach.start,
            arrival_s=None if arrival is None or np.isnan(arrival) else float(arrival),
            request_id=str(series.ids[breach.index]),
            lower=breach.lower,
            alpha=breach.alpha,
        )
        if breach is not None
        else None,
        judged=series.judged,
        threshold=threshold,
        noise_floor=floor,
        requests=n,
        judged_since_s=breach.start if breach is not None else 0.0,
        estimate=float(stretch.mean()) if n else None,
        interval=(float(judged_cs.lower[-1]), float(judged_cs.upper[-1])) if n else None,
        alpha=alpha,
        baseline=_side_figures(pairs, gate, "b", scorer),
        candidate=_side_figures(pairs, gate, "c", scorer),
        aa=_side_figures(pairs, gate, "a", scorer) if has_aa else None,
        evidence=[str(i) for i in evidence_ids[:EVIDENCE_IDS]],
        windows=windows,
    )


def _window_states(
    series: _Series, whole: Any, threshold: float, window_s: float, breach_index: int | None
) -> list[GateState]:
    """The gate's state at the end of each reporting window (by `known_s`) that holds some of its requests."""
    if not len(series.values):
        return []
    windows = np.floor(series.times / window_s).astype(np.int64)
    running_mean = np.cumsum(series.values) / np.arange(1, len(series.values) + 1)
    ends = np.flatnonzero(np.r_[windows[1:] != windows[:-1], True])  # the last request of each window
    states = []
    for end in ends:
        if breach_index is not None and end >= breach_index:
            status: GateStatus = "fail"
        elif whole.upper[end] <= threshold:
            status = "pass"
        else:
            status = "inconclusive"
        window = int(windows[end])
        states.append(
            GateState(
                window=window,
                end_s=(window + 1) * window_s,
                requests=int(end) + 1,
                estimate=float(running_mean[end]),
                lower=float(whole.lower[end]),
                upper=float(whole.upper[end]),
                status=status,
            )
        )
    return states


def judge_gates(
    pairs: pl.DataFrame, gates: GatesFile, sides: Sides, prompt_format: Mapping[str, Any] | None = None
) -> GatesReport:
    """Every gate of `gates` over `pairs` (paired_requests, ordered by known_s): gates.json's content."""
    alpha = gates.alpha_per_gate
    scorers = gates.scorers
    results = [
        _judge(
            pairs,
            gate,
            scorers.index(gate.scorer) if gate.scorer is not None else None,
            alpha,
            gates.window_s,
            sides.aa is not None,
        )
        for gate in gates.gates
    ]
    reasons = [
        f"{gate.name} failed: {gate.condition} breached at {gate.first_breach_s:.1f} s"
        for gate in results
        if gate.status == "fail"
    ]
    reasons += [
        f"{gate.name} inconclusive: not enough evidence that {gate.condition} holds"
        for gate in results
        if gate.status == "inconclusive"
    ]
    return GatesReport(
        verdict="pass" if all(gate.status == "pass" for gate in results) else "fail",
        reasons=reasons,
        baseline=sides.baseline,
        candidate=sides.candidate,
        aa=sides.aa,
        alpha=gates.alpha,
        window_s=gates.window_s,
        requests=pairs.height,
        gates=results,
        prompt_format=dict(prompt_format) if prompt_format is not None else None,
    )
