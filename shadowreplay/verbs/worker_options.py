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


def cpu_ids(text: str) -> list[int]:
    """A CPU list as Linux writes it ("0", "2-3", "0,2-5") as CPU ids; a clear error otherwise."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a CPU list such as 0, 2-3 or 0,2-5") from None
        if low < 0 or high < low:
            raise argparse.ArgumentTypeError(f"{text!r}: {part.strip()!r} is not a CPU range (low-high, from 0)")
        cpus.update(range(low, high + 1))
    return sorted(cpus)


def add_worker_cpus(parser: argparse.ArgumentParser) -> None:
    """`--worker-cpus`: replay/run/cpu_placement.py's chosen worker cores."""
    parser.add_argument(
        "--worker-cpus",
        type=cpu_ids,
        metavar="LIST",
        help="run the replay workers on these CPUs of this host (e.g. 0 or 0-3; one worker per CPU unless "
        "--workers), and the local Ray instance's own processes and a local server on the others, so that "
        "their wake-ups do not delay sends (with a local server, default: a quarter of the CPUs for the workers)",
    )
