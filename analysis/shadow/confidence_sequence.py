"""Anytime-valid confidence sequences for the mean of bounded values, and the earliest breach of a
threshold they show: the statistics of the shadow gates (analysis/shadow/gate_judgement.py).

A shadow is watched for hours, window after window; a test re-run at each look (Kayenta's
Mann-Whitney every interval, a fixed threshold every interval) raises a false alarm sooner or later
however good the candidate. A confidence sequence (CS) holds at every moment at once:
P(exists t: mean_t outside C_t) <= alpha, so it may be looked at after every request.

Every gate reduces to the mean of one bounded value per request (a quantile SLA p95 <= T is the
share of requests above T being <= 5%; an error rate, an accuracy drop or an increase against the
baseline are means of indicators or of paired differences in [-1, 1]).

The CS is the predictable plug-in empirical-Bernstein CS (PrPl-EB) of Waudby-Smith & Ramdas,
"Estimating means of bounded random variables by betting" (JRSS-B 2024), Theorem 2. For values
x_1, x_2, ... in [0, 1] (others are mapped there from their bounds [low, high]):

    mu_t      = (1/2 + sum_{i<=t} x_i) / (t + 1),            mu_0 = 1/2
    s2_t      = (1/4 + sum_{i<=t} (x_i - mu_i)^2) / (t + 1),  s2_0 = 1/4
    lambda_t  = min( sqrt(2 log(2/alpha) / (s2_{t-1} t log(1 + t))), c ),   c = LAMBDA_CAP = 3/4
    v_t       = 4 (x_t - mu_{t-1})^2,   psi(l) = (-log(1 - l) - l) / 4
    C_t       = sum lambda_i x_i / sum lambda_i  +-  (log(2/alpha) + sum v_i psi(lambda_i)) / sum lambda_i

It covers the lambda-weighted average of the values' conditional means, so it stays valid when the
traffic's mix changes over the day (the mean it covers moves with it). Its width follows the values'
own variance: a gate on a rare event (1% errors) narrows far faster than a Hoeffding bound would.

Breaches after a change. A CS from the start dilutes a late change with the hours before it. So a
breach is searched for in a family of CSs, one starting at each window boundary j = 0, 1, 2, ...
at level alpha_j = alpha / ((j + 1)(j + 2)) (sum_j alpha_j = alpha): if the candidate met the
threshold at every moment, every stretch's mean meets it too, and the chance that any of them
shows a breach is at most alpha. `first_breach` returns the earliest moment any CS of the family
lies wholly beyond the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAMBDA_CAP = 0.75
"""c, the cap on the bets lambda_t (any c in (0, 1) is valid; the paper suggests 1/2 or 3/4). It bounds how fast the
CS narrows where the values do not vary: radius >= log(2/alpha) / (c t), so a gate with no errors on either side
needs about 2 x log(2/alpha) / (c x limit) paired requests to pass an increase limit (1,300 for 1% at alpha 0.05/3)."""

MAX_STARTS = 96
"""At most this many CSs in a breach search: with more windows, starts are spread evenly over them (every
k-th boundary), so the search costs at most MAX_STARTS passes over the values."""


@dataclass(frozen=True)
class ConfidenceSequence:
    """The CS over values[0..t] for every t: `estimate` (the weighted mean), `lower` and `upper`, on the
    values' own scale; arrays of the values' length."""

    estimate: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


def confidence_sequence(values: np.ndarray, alpha: float, low: float = 0.0, high: float = 1.0) -> ConfidenceSequence:
    """The PrPl-EB CS (module docstring) of `values`, each within [low, high], at level 1 - alpha."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha {alpha}: must be within (0, 1)")
    span = high - low
    x = (np.asarray(values, dtype=np.float64) - low) / span
    n = len(x)
    if n == 0:
        empty = np.empty(0)
        return ConfidenceSequence(empty, empty, empty)
    t = np.arange(1, n + 1, dtype=np.float64)
    mu = (0.5 + np.cumsum(x)) / (t + 1.0)
    mu_before = np.concatenate(([0.5], mu[:-1]))
    s2 = (0.25 + np.cumsum((x - mu) ** 2)) / (t + 1.0)
    s2_before = np.concatenate(([0.25], s2[:-1]))
    log_term = np.log(2.0 / alpha)
    lam = np.minimum(np.sqrt(2.0 * log_term / (s2_before * t * np.log1p(t))), LAMBDA_CAP)
    psi = (-np.log1p(-lam) - lam) / 4.0
    lam_sum = np.cumsum(lam)
    center = np.cumsum(lam * x) / lam_sum
    radius = (log_term + np.cumsum(4.0 * (x - mu_before) ** 2 * psi)) / lam_sum
    lower = np.clip(center - radius, 0.0, 1.0)
    upper = np.clip(center + radius, 0.0, 1.0)
    return ConfidenceSequence(low + span * center, low + span * lower, low + span * upper)


@dataclass(frozen=True)
class Breach:
    """Where the evidence first lay wholly above a threshold: `index` into the values (the request at which it
    did), `start_index` (the first value of the stretch whose CS showed it), `start` (the stretch's start on the
    timeline), `lower` (the CS's lower bound there) and `alpha` (the level of that stretch's CS)."""

    index: int
    start_index: int
    start: float
    lower: float
    alpha: float


def start_levels(starts: int, alpha: float) -> np.ndarray:
    """alpha_j = alpha / ((j + 1)(j + 2)) for j = 0 .. starts - 1: the levels of a breach search's CSs."""
    j = np.arange(starts, dtype=np.float64)
    return alpha / ((j + 1.0) * (j + 2.0))


def stretch_starts(times: np.ndarray, window_s: float) -> np.ndarray:
    """The start times of a breach search over values at `times` (sorted): 0 and every window boundary up to
    the last time, thinned evenly to at most MAX_STARTS."""
    last = float(times[-1]) if len(times) else 0.0
    count = int(np.floor(max(last, 0.0) / window_s)) + 1
    step = int(np.ceil(count / MAX_STARTS))
    return np.arange(0, count, step, dtype=np.float64) * window_s


def first_breach(
    values: np.ndarray,
    times: np.ndarray,
    threshold: float,
    alpha: float,
    window_s: float,
    low: float = 0.0,
    high: float = 1.0,
) -> Breach | None:
    """The earliest moment (by `times`, sorted ascending, one per value) at which a CS of the family (module
    docstring: one from each window boundary, levels start_levels) lies wholly above `threshold`; None when
    none ever does."""
    starts = stretch_starts(times, window_s)
    levels = start_levels(len(starts), alpha)
    best: Breach | None = None
    for start, level in zip(starts, levels, strict=True):
        first = int(np.searchsorted(times, start, side="left"))
        if first >= len(values) or (best is not None and first >= best.index):
            continue
        suffix = values[first:] if best is None else values[first : best.index]
        lower = confidence_sequence(suffix, float(level), low, high).lower
        above = np.flatnonzero(lower > threshold)
        if len(above):
            index = first + int(above[0])
            if best is None or index < best.index:
                best = Breach(index, first, float(start), float(lower[above[0]]), float(level))
    return best
