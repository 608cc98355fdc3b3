"""`shadowreplay inspect`: what a traffic log holds: volume, rates, burstiness, lengths, reuse."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shadowreplay.errors import UserError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="summarise a traffic log: rate, peak-to-average, token percentiles, monthly volume",
        description=(
            "Rows, time span, mean request rate, peak-to-average request rate over 1 s and 60 s windows "
            "(largest count in windows aligned at the first arrival / (rows x w / span)), prompt and output "
            "token percentiles, tokens per second, the monthly token volume this rate implies (30-day month), "
            "prefix reuse at two levels (the share of requests with a prefix block seen in an earlier request, "
            "and the share of all requests' prefix blocks that appeared in an earlier request), and a per-tag "
            "breakdown when tags exist. A window longer than the log's span gets no peak-to-average (n/a)."
        ),
    )
    parser.add_argument("log", type=Path, metavar="LOG.parquet")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.set_defaults(func=run)


NO_WINDOW = "n/a (window longer than the log's span)"
REUSE_NOTE = (
    "Prefix reuse, in arrival order. Requests: requests with at least one prefix block id seen in an earlier "
    "request / all requests (one shared block, such as a common system prompt, is enough). Blocks: block ids, "
    "over all requests' block lists, that appeared in an earlier request / all block ids (a repeat inside one "
    "request does not count): at most what a prefix cache of unlimited size could serve."
)


def _fmt(value, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _peak_to_average(stats: dict, window_s: float) -> str:
    value = stats[f"peak_to_average_{window_s:g}s"]
    if value is None and stats["rows"] >= 2 and stats["span_s"] > 0 and window_s > stats["span_s"]:
        return NO_WINDOW
    return _fmt(value, 2)


def _share(share: float | None, part: int, whole: int, unit: str) -> str:
    return "-" if share is None else f"{share:.1%} ({part:,} of {whole:,} {unit})"


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from shadowreplay.analysis.summary.traffic_stats import traffic_stats
    from shadowreplay.replay.schemas.traffic_log import TrafficLogError

    if not args.log.exists():
        raise UserError(f"{args.log}: no such file")
    try:
        stats = traffic_stats(args.log)
    except TrafficLogError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(stats, indent=2, default=str))
        return 0
    console = Console() if Console().is_terminal else Console(width=120)
    reuse = stats["prefix_reuse"]
    overview = Table(title=f"Traffic log {args.log}", show_header=False)
    overview.add_column("", style="bold")
    overview.add_column("", justify="right")
    for label, value in (
        ("rows", _fmt(stats["rows"])),
        ("span", f"{_fmt(stats['span_s'], 1)} s ({stats['first_arrival']} .. {stats['last_arrival']})"),
        ("mean rate", f"{_fmt(stats['rate_rps'], 2)} req/s"),
        ("peak-to-average, 1 s windows", _peak_to_average(stats, 1.0)),
        ("peak-to-average, 60 s windows", _peak_to_average(stats, 60.0)),
        ("tokens per second", _fmt(stats["tokens_per_s"], 0)),
        ("monthly tokens at this rate (30 days)", _fmt(stats["monthly_tokens"], 0)),
        (
            "prefix reuse: requests",
            _share(reuse["requests_share"], reuse["requests_reusing"], reuse["requests"], "requests"),
        ),
        ("prefix reuse: blocks", _share(reuse["blocks_share"], reuse["blocks_reused"], reuse["blocks"], "blocks")),
    ):
        overview.add_row(label, value)
    console.print(overview)
    if reuse["blocks"]:
        console.print(f"[dim]{REUSE_NOTE}[/dim]", highlight=False)
    lengths = Table(title="Token lengths")
    for column in ("", "p50", "p90", "p99", "max", "rows with a count"):
        lengths.add_column(column, justify="right")
    for label, key in (("prompt", "prompt_tokens"), ("output", "completion_tokens")):
        d = stats[key]
        lengths.add_row(label, *(_fmt(d[k]) for k in ("p50", "p90", "p99", "max", "count")))
    console.print(lengths)
    if stats["tags"]:
        tags = Table(title="Per tag")
        for column in ("tag", "rows", "req/s", "prompt p50", "output p50", "monthly tokens"):
            tags.add_column(column, justify="right")
        for tag, t in stats["tags"].items():
            tags.add_row(
                tag,
                _fmt(t["rows"]),
                _fmt(t["rate_rps"], 2),
                _fmt(t["prompt_tokens"]["p50"]),
                _fmt(t["completion_tokens"]["p50"]),
                _fmt(t["monthly_tokens"]),
            )
        console.print(tags)
    return 0
