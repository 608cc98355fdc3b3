"""The one console script, `shadowreplay`, with verbs. Each verb lives in shadowreplay/verbs/<verb>.py
and exposes `add_parser(subparsers)` (which sets `func`); only the verb named is imported (a verb's
imports are its own start-up cost), every verb for top-level help. Errors meant for the user are
raised as `UserError` and printed as one line, without a traceback."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from shadowreplay import __version__
from shadowreplay.errors import ShadowReplayError

VERBS = ("ingest", "inspect", "replay", "report", "sweep", "capacity", "shadow", "gate", "locust", "capture", "demo")


def build_parser(verbs: Sequence[str] = VERBS) -> argparse.ArgumentParser:
    """The parser of `verbs` (every verb by default)."""
    parser = argparse.ArgumentParser(
        prog="shadowreplay",
        description="Replay captured production LLM traffic against candidate models and measure them.",
    )
    parser.add_argument("--version", action="version", version=f"shadowreplay {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in verbs:
        module = importlib.import_module(f"shadowreplay.verbs.{verb}")
        module.add_parser(subparsers)
    return parser


def named_verb(argv: Sequence[str]) -> str | None:
    """The verb `argv` names: its first argument that is not an option (the top-level options take no
    value), when that is a verb."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return first if first in VERBS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verb = named_verb(argv)
    parser = build_parser(VERBS if verb is None else (verb,))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ShadowReplayError as exc:  # meant for the user: one line; anything else keeps its traceback
        print(f"shadowreplay {args.verb}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"shadowreplay {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
