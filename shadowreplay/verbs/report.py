"""`shadowreplay report RUN_DIR`: latency, throughput, goodput, errors, cost and GPU use per target and tag.

Reads only RUN_DIR's Parquet results, telemetry and manifest (analysis/) and a price file, writes
RUN_DIR/summary.json (keys documented in analysis/summary/run_summary.py) and RUN_DIR/report.html (analysis/
html_report.py), and prints the summary as tables, or as JSON with --json.

A run that is not whole (its driver killed, stopped by Ctrl-C, failed; pairs without a final row, torn
shards, `worker_lost` rows: replay/schemas/run_completeness.py) is still reported, from the rows that can
be read, after saying so first: in bold red before the tables (on stderr with --json), in summary.json
(`completeness`) and at the top of report.html, with the command that resumes it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from shadowreplay.analysis.cost.model import RUN_SPAN, CostError, MonthlyVolume
from shadowreplay.analysis.cost.prices import DEFAULT_PRICES_PATH, chosen_prices
from shadowreplay.analysis.data.run_data import ANALYSIS_COLUMNS, RunDataError, load_run
from shadowreplay.analysis.data.telemetry_data import load_telemetry
from shadowreplay.analysis.metrics import table as metrics
from shadowreplay.analysis.metrics.slo import EXAMPLE, SLO_METRICS, parse_slos
from shadowreplay.analysis.report.run_page import DISTRIBUTION_CURVES, SEND_TIME_BINS, write_run_report
from shadowreplay.analysis.summary.models import RunSummary
from shadowreplay.analysis.summary.run_summary import summarize, write_summary
from shadowreplay.analysis.summary.slo_check import check_exit_code, check_lines, slo_verdicts
from shadowreplay.analysis.summary.tables import SummaryTable, summary_tables
from shadowreplay.analysis.summary.terminal_tables import terminal_table
from shadowreplay.analysis.summary.traffic_stats import traffic_stats
from shadowreplay.errors import UserError
from shadowreplay.replay.schemas.run_completeness import RunCompleteness, unreadable_shards
from shadowreplay.replay.schemas.run_dir import RunDir
from shadowreplay.verbs.load_check_options import add_max_lateness, checks_from

MET_STYLES = {"yes": "[green]yes[/green]", "no": "[red]no[/red]"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="summarize a run: latency, throughput, goodput, errors, cost and GPU use per target and tag",
        description=(
            "Summarize the results of RUN_DIR per target and per tag: requests, errors by status, "
            "TTFT / ITL / TPOT / e2e percentiles, latency from the scheduled send time, output tokens/s, "
            "requests/s, goodput under the SLOs and client-vs-server token-count mismatches; the cost of the run "
            "per target from a price file, per million tokens and per month; and, when RUN_DIR/telemetry holds "
            "NVML samples, GPU utilisation, memory high-water mark, power and joules per output token. "
            "Writes RUN_DIR/summary.json and RUN_DIR/report.html (one self-contained page with charts, no network "
            "needed). Percentiles use linear interpolation (numpy's default); latency counts final attempts with "
            "status ok; rates and energy count the steady window."
        ),
    )
    parser.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help=(
            "run directory written by `shadowreplay replay`; or a SWEEP_DIR written by `shadowreplay sweep`, whose "
            "curve, saturation, repeats and SLO capacity are printed and whose report.html is rebuilt"
        ),
    )
    parser.add_argument(
        "--slo",
        action="append",
        metavar="SPEC",
        help=(
            f"service-level objectives, comma-separated <metric>_p<percentile>=<number>ms|s, e.g. {EXAMPLE}; "
            f"metrics: {', '.join(SLO_METRICS)}; may be repeated"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of tables")
    add_max_lateness(parser)
    parser.add_argument(
        "--check",
        action="store_true",
        help=(
            "for CI: after the report, one line per target and SLO (met, MISSED with the value and by how much "
            "over the threshold, or NO DATA when no request succeeded, which counts as missed), on stdout (on "
            "stderr with --json); exit 0 when every SLO is met on every target (its whole slice; tags are not "
            "checked), 1 when any is missed; without --slo there is nothing to check: exit 2 before reading the run"
        ),
    )
    parser.add_argument(
        "--steady-warmup",
        type=float,
        metavar="S",
        help=(
            "seconds after the first scheduled send excluded from throughput as warm-up "
            f"(default: {metrics.DEFAULT_WARMUP_FRACTION * 100:g}%% of the schedule span); the window ends at the last "
            "scheduled send"
        ),
    )
    parser.add_argument(
        "--prices",
        metavar="FILE",
        help=(
            f"price file (format: configs/prices.yaml) for the cost section; default: {DEFAULT_PRICES_PATH} in the "
            "current directory when it exists, else no cost section; 'none' leaves costs out. Targets are matched "
            "by the file's `targets:` map, else by base_url host and model; an unmatched target shows 'no price'"
        ),
    )
    volume = parser.add_mutually_exclusive_group()
    volume.add_argument(
        "--monthly-requests",
        type=float,
        metavar="N",
        help="project costs to N requests per month (at the run's mean tokens per request)",
    )
    volume.add_argument(
        "--monthly-tokens",
        type=float,
        metavar="N",
        help="project costs to N tokens (input + output) per month, in the run's input/output mix",
    )
    volume.add_argument(
        "--monthly-from-log",
        metavar="LOG",
        type=Path,
        help="project costs to the monthly tokens of this traffic log (its tokens / its arrival span x 30 days)",
    )
    parser.epilog = (
        "Without a --monthly-* option, costs are projected from the run itself: its billed tokens per second of "
        "its schedule span x 30 days. Failed requests are not billed unless the price file says so."
    )
    parser.set_defaults(func=run)


def _monthly_volume(args: argparse.Namespace) -> MonthlyVolume:
    if args.monthly_requests is not None:
        return MonthlyVolume("requests", args.monthly_requests)
    if args.monthly_tokens is not None:
        return MonthlyVolume("tokens", args.monthly_tokens)
    if args.monthly_from_log is not None:
        monthly = traffic_stats(args.monthly_from_log)["monthly_tokens"]
        if not monthly:
            raise CostError(
                f"{args.monthly_from_log}: the traffic log has no token counts or no arrival span "
                "to project a month from"
            )
        return MonthlyVolume("traffic_log", monthly)
    return RUN_SPAN


def run(args: argparse.Namespace) -> int:
    if _is_sweep_dir(args.run_dir):
        return report_sweep(args)
    if _is_unfinished_sweep(args.run_dir):
        raise UserError(
            f"{args.run_dir}: a sweep that did not finish (no curve.parquet); take it up with "
            f"`shadowreplay sweep --resume {args.run_dir}`, or report one of its points (points/*)"
        )
    slos = parse_slos(",".join(args.slo)) if args.slo else ()
    if args.check and not slos:
        raise UserError(f"--check needs at least one --slo to check (e.g. --slo {EXAMPLE}); nothing was checked")
    prices = chosen_prices(args.prices)
    monthly = _monthly_volume(args)
    run_dir = RunDir(args.run_dir)
    torn = unreadable_shards(run_dir)
    try:
        data = load_run(
            args.run_dir,
            columns=ANALYSIS_COLUMNS,
            leave_out={shard.name for shard, _ in torn},  # what can be read is reported
            unreadable_manifest="none",  # completeness says so
        )
    except RunDataError:
        if run_dir.has_results():  # what the run directory holds (each shard read), then why it cannot be reported
            print_incomplete(RunCompleteness.of(run_dir).lines(), Console(stderr=True))
        raise
    # Before the figures: is this the whole run? (from the check pass's own facts: no second read)
    completeness = RunCompleteness.from_facts(run_dir, data.final_by_status, len(data.target_names), torn)
    telemetry = load_telemetry(args.run_dir)
    summary = summarize(
        data,
        slos,
        warmup_s=args.steady_warmup,
        prices=prices,
        monthly=monthly,
        telemetry=telemetry,
        checks=checks_from(args),
        curves=DISTRIBUTION_CURVES,
        send_time_bins=SEND_TIME_BINS,
        completeness=completeness,
    )
    path = write_summary(args.run_dir, summary)
    html = write_run_report(args.run_dir, summary, data, telemetry)
    if args.json:
        print_incomplete(summary.incomplete_lines(), Console(stderr=True))  # the JSON has them too
        print(json.dumps(summary.json_dict(), indent=2, allow_nan=False))
    else:
        print_summary(summary, _console())
        Console(stderr=True).print(f"[dim]wrote {path} and {html}[/dim]")
    if args.check:
        return print_check(summary, Console(stderr=True) if args.json else _console())
    return 0


def print_check(summary: RunSummary, console: Console) -> int:
    """`--check`: one line per target and SLO and the outcome (analysis/summary/slo_check.py); the exit code."""
    verdicts = slo_verdicts(summary)
    *lines, outcome = check_lines(verdicts)
    for verdict, line in zip(verdicts, lines, strict=True):
        console.print(line, style="green" if verdict.passed else "bold red", highlight=False, soft_wrap=True)
    code = check_exit_code(verdicts)
    console.print(outcome, style="bold red" if code else "bold green", highlight=False, soft_wrap=True)
    return code


def _is_sweep_dir(path: str | Path) -> bool:
    """A sweep directory: its curve, and no results of its own (its points are run directories)."""
    from shadowreplay.replay.schemas.run_dir import SweepDir

    return SweepDir(path).curve_path.is_file() and not RunDir(path).results_dir.is_dir()


def _is_unfinished_sweep(path: str | Path) -> bool:
    """A sweep directory without its curve: killed or interrupted before its end."""
    from shadowreplay.replay.schemas.run_dir import POINTS_DIRNAME

    return (Path(path) / POINTS_DIRNAME).is_dir() and not RunDir(path).results_dir.is_dir()


def report_sweep(args: argparse.Namespace) -> int:
    """`report SWEEP_DIR`: the sweep's curve and findings as `sweep` printed them, from its summary.json
    and curve.parquet, and SWEEP_DIR/report.html rebuilt. The points were judged when measured:
    --slo and --steady-warmup apply to one point's run directory (SWEEP_DIR/points/...)."""
    from shadowreplay.analysis.data.sweep_data import read_sweep
    from shadowreplay.analysis.report.sweep_page import write_sweep_report
    from shadowreplay.verbs.sweep import print_sweep

    asked = [
        option
        for option, given in (
            ("--slo", args.slo),
            ("--steady-warmup", args.steady_warmup is not None),
            ("--check", getattr(args, "check", False)),
        )
        if given
    ]
    if asked:
        raise UserError(
            f"{args.run_dir} is a sweep directory, judged when each point was measured; {', '.join(asked)} "
            f"applies to a run directory: report one of {Path(args.run_dir) / 'points'}/* instead"
        )
    summary, curve = read_sweep(args.run_dir)
    html = write_sweep_report(args.run_dir)
    if args.json:
        print(json.dumps({"summary": summary.json_dict(), "curve": curve.to_dicts()}, indent=2, allow_nan=False))
    else:
        print_sweep(summary, curve.to_dicts(), _console())
        Console(stderr=True).print(f"[dim]wrote {html}[/dim]")
    return 0


def _console() -> Console:
    """A console for stdout: the terminal's width, or 120 columns when writing to a file or pipe."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=120)
    return console


def rich_table(table: SummaryTable, width: int = 120) -> Table:
    """A SummaryTable as a rich Table fitting `width` columns with target names whole
    (analysis/summary/terminal_tables.py): numeric columns right-aligned, a rule between groups, verdicts coloured."""
    return terminal_table(table, width, lambda column, text: MET_STYLES.get(text, text) if column == "Met" else text)


def print_incomplete(lines: list[str], console: Console) -> None:
    """An incomplete run's lines (replay/schemas/run_completeness.py), in bold red: read before any figure."""
    for line in lines:
        console.print(line, style="bold red", highlight=False, markup=False, soft_wrap=True)


def print_summary(summary: RunSummary, console: Console) -> None:
    """The summary as rich tables: requests and rates, errors, latency per target, SLOs, cost, GPU; an
    incomplete run says so first."""
    print_incomplete(summary.incomplete_lines(), console)
    source, window = summary.source, summary.window
    console.print(f"[bold]Run {summary.run_id or '?'}[/bold]  {summary.run_dir}")
    console.print(
        f"{source.rows} result rows ({source.final_rows} final) in {source.results_files} shard(s); "
        f"{window.kind} window {window.start_s:.2f}-{window.end_s:.2f} s "
        f"({window.duration_s:.2f} s, warm-up {window.warmup_s:.2f} s); percentiles: linear interpolation"
    )
    if source.requests_without_final_row and summary.completeness is None:  # else among its lines
        console.print(f"[yellow]{source.requests_without_final_row} request(s) have no final row[/yellow]")
    if summary.slos:
        console.print(f"SLOs: {', '.join(summary.slos)}")
    for table in summary_tables(summary):
        console.print(rich_table(table, console.width))
        if table.note:
            if table.note.startswith(("DISAGREE", "COUNTS DIFFER", "NOT COMPARABLE")):
                style = "bold red"
            else:
                style = "yellow" if table.note.startswith("EXAMPLE") else "dim"
            console.print(f"[{style}]{table.note}[/{style}]", highlight=False)
    for part, label in (
        (summary.cost, "Cost"),
        (summary.gpu, "GPU telemetry"),
        (summary.server_histograms, "Server histograms"),
    ):
        if part.get("status") == "absent":
            console.print(f"[dim]{label}: {part['reason']}[/dim]")
    for warning in summary.load_warnings:  # last, where it is read: the figures above are the client's too
        console.print(f"[bold red]WARNING[/bold red] {warning.message}", highlight=False)
