"""Command-line options of the replay workers, shared by the verbs that run them (replay, sweep)."""

from __future__ import annotations

import argparse


def add_busy_poll(parser: argparse.ArgumentParser) -> None:
    """`--busy-poll`: replay/run/worker.py's `busy_poll` setting."""
    parser.add_argument(
        "--busy-poll",
        action="store_true",
        help="workers' event loops poll without sleeping, so a token is stamped without waiting for a "
        "sleeping CPU to wake (measured on a 2-core VM: ITL error p99 1.6 -> 0.4 ms), at the price of one "
        "busy core per worker; leave it off when a local server shares the cores",
    )
