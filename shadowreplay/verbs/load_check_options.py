"""`--max-lateness-ms`, shared by `report` and `replay --strict`: the send-lateness limit of the load
checks (analysis/summary/load_fidelity.py)."""

from __future__ import annotations

import argparse

from shadowreplay.analysis.summary.load_fidelity import LoadCheck, SendLateness, load_checks
from shadowreplay.errors import UserError


def add_max_lateness(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-lateness-ms",
        type=float,
        default=SendLateness.limit_ms,
        metavar="MS",
        help=(
            f"send lateness p99 above this warns that the load was not offered as recorded "
            f"(default {SendLateness.limit_ms:g})"
        ),
    )


def checks_from(args: argparse.Namespace) -> tuple[LoadCheck, ...]:
    if args.max_lateness_ms <= 0:
        raise UserError("--max-lateness-ms must be positive")
    return load_checks(args.max_lateness_ms)
