"""`shadowreplay gate`: a shadow's judgement recomputed from a run directory alone (no Ray, no network)."""

from __future__ import annotations

import argparse
from pathlib import Path

from shadowreplay.verbs.gate_options import add_gate_options, print_judgement


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "gate",
        help="judge a baseline against a candidate in any run directory by a gates file (analysis only)",
        description=(
            "Pair the final rows of --baseline and --candidate in RUN_DIR request by request (and --aa, a second "
            "copy of the baseline, for the noise floor), score answers against the log's references "
            "(RUN_DIR/requests.parquet, written by `shadow`), and judge every gate of --gates with anytime-valid "
            "confidence sequences: pass, fail (with the first breach on the replay's timeline) or inconclusive. "
            "Writes gates.json, summary.md, summary.html, pairs.parquet and windows.parquet to -o (default RUN_DIR). "
            "Exit 0 when the verdict is pass, 3 when it is fail."
        ),
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory (replay or shadow)")
    parser.add_argument(
        "--baseline",
        required=True,
        metavar="NAME",
        help="the baseline target's name, or `production` for the answers captured in the log",
    )
    parser.add_argument("--candidate", required=True, metavar="NAME", help="the candidate target's name")
    parser.add_argument("--aa", metavar="NAME", help="the baseline's second copy (the noise floor), if one ran")
    parser.add_argument("-o", "--output", type=Path, metavar="DIR", help="where the judgement goes (default RUN_DIR)")
    add_gate_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shadowreplay.analysis.cost.prices import chosen_prices
    from shadowreplay.analysis.shadow.gates_file import load_gates
    from shadowreplay.analysis.shadow.judge_run import judge_run
    from shadowreplay.analysis.shadow.paired_requests import Sides

    gates = load_gates(args.gates)
    sides = Sides(args.baseline, args.candidate, args.aa)
    judgement = judge_run(args.run_dir, sides, gates, args.output or args.run_dir, chosen_prices(args.prices))
    return print_judgement(judgement, "gate", args.json)
