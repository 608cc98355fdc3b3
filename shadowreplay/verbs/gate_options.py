"""Command-line pieces shared by `shadow` and `gate`: the gates file, the prices, and what is printed of a
judgement (analysis/shadow/judge_run.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shadowreplay.analysis.shadow.judge_run import Judgement

FAILED_EXIT = 3
"""The exit status of a judgement whose verdict is fail (after every file is written)."""


def add_gate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gates",
        required=True,
        type=Path,
        metavar="G.yaml",
        help="the rollback triggers (format: configs/gates/default.yaml): alpha, window, gates",
    )
    parser.add_argument(
        "--prices",
        metavar="FILE",
        help="price file for the cost section (default: configs/prices.yaml where present; `none` for no cost)",
    )
    parser.add_argument("--json", action="store_true", help="print gates.json instead of the summary lines")


def print_judgement(judgement: Judgement, verb: str, as_json: bool) -> int:
    """The verdict and each gate as lines (or gates.json), and the exit status: 0 pass, FAILED_EXIT fail."""
    report = judgement.report
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
        print(
            f"{verb}: verdict {report.verdict.upper()} for {report.candidate} against {report.baseline} "
            f"({report.requests:,} paired requests, alpha {report.alpha:g})"
        )
        for gate in report.gates:
            breach = f", first breach at {gate.first_breach_s:.1f} s" if gate.first_breach_s is not None else ""
            if gate.interval is None:
                judged = "no request in its population"
            else:
                judged = f"{gate.judged} {gate.estimate:.4f}, [{gate.interval[0]:.4f}, {gate.interval[1]:.4f}]"
            print(f"  {gate.status.upper():<12} {gate.name}: {gate.condition}{breach}; {judged} (n={gate.requests:,})")
        out = judgement.out
        print(f"{verb}: wrote {out.gates_path}, {out.summary_md_path} and {out.summary_html_path}")
    return 0 if report.verdict == "pass" else FAILED_EXIT
