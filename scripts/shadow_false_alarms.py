"""How often the shadow gates raise a false alarm over a long A/A shadow, against the per-window checks of
Kayenta, Argo Rollouts and Flagger (every window judged on its own, uncorrected), on the same simulated
periods (tests/support/shadow_pairs.py aa_false_alarms: analysis only, synthetic rows judged by the real
judge_gates).

    python scripts/shadow_false_alarms.py [--periods 400] [--windows 48] [--per-window 120]

Prints both false-alarm rates with their 95% Wilson intervals and the ratio; the shadow gates' rate should
be at most alpha (0.05).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.shadow_pairs import aa_false_alarms  # noqa: E402


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--periods", type=int, default=400)
    parser.add_argument("--windows", type=int, default=48, help="reporting windows per period (default 48: 48 h)")
    parser.add_argument("--per-window", type=int, default=120, help="requests per window (1 request/s)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    found = aa_false_alarms(args.periods, args.windows, args.per_window, args.alpha, args.seed)
    took = time.perf_counter() - started
    for label, count in (("shadow gates (confidence sequences)", found.ours), ("per-window checks", found.naive)):
        low, high = wilson(count, found.periods)
        rate = count / found.periods
        print(f"{label:<38} false alarms {count:>4}/{found.periods} = {rate:6.1%}  [{low:.1%}, {high:.1%}]")
    if found.ours:
        print(f"alpha {args.alpha:g}; per-window checks: {found.naive_rate / found.ours_rate:.1f}x the false alarms")
    else:
        print(f"alpha {args.alpha:g}; the shadow gates raised none; {took:.1f} s")
    return 0 if found.ours_rate <= args.alpha else 1


if __name__ == "__main__":
    sys.exit(main())
