"""Synthetic paired measures (analysis/shadow/paired_requests.py's columns) for judging gates without a
replay: many simulated shadow periods, changes at known moments."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl

from shadowreplay.analysis.shadow.gate_judgement import judge_gates
from shadowreplay.analysis.shadow.gates_file import GatesFile
from shadowreplay.analysis.shadow.paired_requests import Sides

Z_95_ONE_SIDED = 1.6448536269514722
TTFT_P95_MS = 200.0 * np.exp(0.3 * Z_95_ONE_SIDED)
"""The true p95 of side_columns' lognormal TTFT (median 200 ms, sigma 0.3)."""


def side_columns(
    prefix: str,
    n: int,
    rng: np.random.Generator,
    ttft_ms: np.ndarray | None = None,
    error_rate: float = 0.0,
    accuracy: float = 1.0,
) -> dict[str, np.ndarray | list]:
    """One side's columns: lognormal TTFT (median 200 ms) unless given, errors and right answers drawn at the
    given rates; a failed request has no latency and no right answer."""
    ttft = ttft_ms if ttft_ms is not None else rng.lognormal(np.log(200.0), 0.3, n)
    error = rng.random(n) < error_rate
    correct = (rng.random(n) < accuracy) & ~error
    ok = ~error
    return {
        f"{prefix}_status": np.where(error, "http_error", "ok").tolist(),
        f"{prefix}_error": error,
        f"{prefix}_ttft_ms": [float(v) if k else None for v, k in zip(ttft, ok, strict=True)],
        f"{prefix}_tpot_ms": [20.0 if k else None for k in ok],
        f"{prefix}_e2e_ms": [float(v) + 400.0 if k else None for v, k in zip(ttft, ok, strict=True)],
        f"{prefix}_output_tokens": np.where(ok, 21, 0).astype(np.int32),
        f"{prefix}_truncated": np.zeros(n, dtype=bool),
        f"{prefix}_refusal": np.zeros(n, dtype=bool),
        f"{prefix}_json_valid": np.zeros(n, dtype=bool),
        f"{prefix}_answered_json": np.zeros(n, dtype=bool),
        f"{prefix}_correct_0": correct,
    }


def synthetic_pairs(n: int, rate: float, sides: dict[str, dict[str, np.ndarray | list]]) -> pl.DataFrame:
    """`n` requests `1 / rate` s apart, with the given sides' columns (side_columns), ordered by known_s."""
    scheduled = np.arange(n) / rate
    columns: dict[str, object] = {
        "request_id": [f"r{i:06d}" for i in range(n)],
        "scheduled_s": scheduled,
        "known_s": scheduled + 0.5,
        "tag": ["math" if i % 2 else "chat" for i in range(n)],
        "arrival_s": scheduled,
        "json_expected": np.zeros(n, dtype=bool),
    }
    for side in sides.values():
        columns.update(side)
    frame = pl.DataFrame(columns).with_columns(
        (pl.lit(datetime(2024, 5, 1, tzinfo=UTC)) + pl.duration(seconds=pl.col("arrival_s")))
        .dt.cast_time_unit("us")
        .alias("arrival_time"),
        pl.when((pl.col("b_status") == "ok") & (pl.col("c_status") == "ok"))
        .then(pl.col("c_output_tokens").cast(pl.Float64) / pl.col("b_output_tokens"))
        .alias("length_ratio"),
    )
    return frame


def naive_window_alarm(pairs: pl.DataFrame, window_s: float, ttft_sla_ms: float) -> bool:
    """What the anchors do (Kayenta, Argo Rollouts, Flagger): every window judged on its own, uncorrected for
    the looks: the window's TTFT p95 above the SLA, or a one-sided two-proportion z-test at 5% finding the
    candidate's errors or wrong answers above the baseline's."""
    windows = (pairs["scheduled_s"].to_numpy() // window_s).astype(int)
    for w in np.unique(windows):
        part = pairs.filter(windows == w)
        ttft = part["c_ttft_ms"].drop_nulls().to_numpy()
        if len(ttft) and np.percentile(ttft, 95) > ttft_sla_ms:
            return True
        for base, cand in (
            (part["b_error"].to_numpy(), part["c_error"].to_numpy()),
            (~part["b_correct_0"].to_numpy(), ~part["c_correct_0"].to_numpy()),
        ):
            pooled = (base.mean() + cand.mean()) / 2
            if 0 < pooled < 1 and (cand.mean() - base.mean()) / np.sqrt(2 * pooled * (1 - pooled) / len(base)) > (
                Z_95_ONE_SIDED
            ):
                return True
    return False


@dataclass(frozen=True)
class FalseAlarms:
    periods: int
    ours: int  # periods in which some gate failed
    naive: int  # periods in which naive_window_alarm fired

    @property
    def ours_rate(self) -> float:
        return self.ours / self.periods

    @property
    def naive_rate(self) -> float:
        return self.naive / self.periods


def aa_false_alarms(periods: int, windows: int, per_window: int, alpha: float, seed: int) -> FalseAlarms:
    """Simulated A/A shadow periods (1 request/s, `windows` windows of `per_window` s) at the gates' own
    boundaries, the hardest null: the candidate's true TTFT p95 is the SLA itself, and its error (5%) and
    wrong-answer (20%) rates equal the baseline's under limits of no increase at all. Each period judged by
    judge_gates (a false alarm: some gate fails) and by naive_window_alarm."""
    rng = np.random.default_rng(seed)
    spec = GatesFile.model_validate(
        {
            "alpha": alpha,
            "window": f"{per_window}s",
            "gates": [
                {"name": "ttft-sla", "metric": "ttft_p95_ms", "max": float(TTFT_P95_MS)},
                {"name": "accuracy", "metric": "accuracy", "scorer": "normalized", "max_drop": 0.0},
                {"name": "errors", "metric": "error_rate", "max_increase": 0.0},
            ],
        }
    )
    n = windows * per_window
    ours = naive = 0
    for _ in range(periods):
        pairs = synthetic_pairs(
            n,
            1.0,
            {
                "b": side_columns("b", n, rng, error_rate=0.05, accuracy=0.8),
                "c": side_columns("c", n, rng, error_rate=0.05, accuracy=0.8),
            },
        )
        ours += any(gate.status == "fail" for gate in judge_gates(pairs, spec, Sides("base", "cand")).gates)
        naive += naive_window_alarm(pairs, float(per_window), float(TTFT_P95_MS))
    return FalseAlarms(periods, ours, naive)
