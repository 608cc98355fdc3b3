"""`shadowreplay sweep`: load points of rising load to saturation, then the SLO capacity by bisection."""

from __future__ import annotations

import argparse
from pathlib import Path

from shadowreplay.errors import UserError
from shadowreplay.verbs.worker_options import add_busy_poll


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="sweep load against one target to saturation and find its SLO capacity",
        description=(
            "Run load points of rising load (Poisson arrivals at --from..--to requests/s, or --from..--to "
            "closed-loop users), each request drawn from LOG's own prompt/output mix, until throughput stops "
            "rising or errors explode; then bisect for the highest load that meets every --slo (the "
            "replica's SLO capacity). Each point is a run directory under SWEEP_DIR/points/; the curve is "
            "SWEEP_DIR/curve.parquet, SWEEP_DIR/summary.json holds saturation and slo_capacity, and "
            "SWEEP_DIR/report.html draws the curve (a self-contained page that opens with no network)."
        ),
    )
    parser.add_argument("log", type=Path, help="traffic log (Parquet) whose prompt/output mix is replayed")
    parser.add_argument("--target", "-t", required=True, type=Path, metavar="T.yaml", help="the target to sweep")
    parser.add_argument(
        "--shape",
        choices=("poisson", "concurrency"),
        default="poisson",
        help="open-loop Poisson rates or closed-loop users",
    )
    parser.add_argument(
        "--from", dest="start", type=float, required=True, metavar="A", help="first load: requests/s, or users"
    )
    parser.add_argument(
        "--to", dest="stop", type=float, required=True, metavar="B", help="last load of the rising series"
    )
    parser.add_argument("--points", type=int, default=6, help="load points from A to B, geometric (default 6)")
    parser.add_argument("--duration", default="20s", help="length of each load point (default 20s)")
    parser.add_argument(
        "--slo", action="append", default=[], metavar="SPEC", help="e.g. ttft_p95=500ms,tpot_p95=50ms (repeatable)"
    )
    parser.add_argument("--bisect-steps", type=int, default=3, help="bisection steps for the SLO capacity (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-prompt-tokens", type=int, metavar="N", help="clamp synthesized prompt lengths")
    parser.add_argument("--max-completion-tokens", type=int, metavar="N", help="clamp requested output lengths")
    parser.add_argument(
        "--address", metavar="RAY_ADDRESS", help="join this Ray cluster instead of starting a local instance"
    )
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="SWEEP_DIR")
    add_busy_poll(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from shadowreplay.analysis.metrics.slo import parse_slos
    from shadowreplay.analysis.report.sweep_page import write_sweep_report
    from shadowreplay.loadgen.sweep import LoadSweep, SweepSettings
    from shadowreplay.replay.run.plan import LengthClamp, parse_duration_s, select_rows
    from shadowreplay.replay.run.session import Session
    from shadowreplay.replay.schemas.run_dir import RunDir
    from shadowreplay.replay.targets.config import load_targets

    if not 0 < args.start <= args.stop:
        raise UserError("--from must be positive and not above --to")
    slos = tuple(s for spec in args.slo for s in parse_slos(spec))
    settings = SweepSettings(
        shape=args.shape,
        start=args.start,
        stop=args.stop,
        points=args.points,
        duration_s=parse_duration_s(args.duration),
        slos=slos,
        bisect_steps=args.bisect_steps,
        seed=args.seed,
        clamp=LengthClamp(args.max_prompt_tokens, args.max_completion_tokens),
        busy_poll=args.busy_poll,
    )
    targets = load_targets([args.target])
    rows = select_rows(args.log)
    if args.output.exists() and any(args.output.iterdir()):
        raise UserError(f"{args.output} is not empty; choose a new sweep directory")
    args.output.mkdir(parents=True, exist_ok=True)
    console = Console() if Console().is_terminal else Console(width=140)

    def show(point: dict) -> None:
        level = f"{point['concurrency']} users" if point["concurrency"] else f"{point['offered_rps']:.3g} req/s"
        console.print(
            f"sweep point {point['point']} ({point['phase']}): {level}: {point['achieved_rps']:.2f} req/s, "
            f"{point['output_tokens_per_s']:.0f} tok/s, TTFT p95 {point['ttft_p95_ms'] or 0:.0f} ms, "
            f"errors {point['error_rate']:.1%}, "
            f"SLO {'met' if point['slo_met'] else 'missed' if point['slo_met'] is False else '-'}",
            highlight=False,
            soft_wrap=True,
        )

    # The session reads the key (one clear line if it cannot), starts the server and Ray, and
    # stops them and writes SWEEP_DIR/manifest.json on any exit.
    with Session(targets, RunDir(args.output), ray_address=args.address) as session:
        outcome = LoadSweep(rows, session, settings, args.output, on_point=show).run()
    live_targets = session.targets

    table = Table(title=f"Sweep of {live_targets[0].name} ({args.shape})")
    for column in ("point", "load", "req/s", "tok/s", "TTFT p50", "TTFT p95", "TPOT p95", "e2e p95", "errors", "SLO"):
        table.add_column(column, justify="right")
    for p in outcome.curve:
        load = f"{p['concurrency']} users" if p["concurrency"] else f"{p['offered_rps']:.3g}/s"
        table.add_row(
            f"{p['point']} {p['phase']}",
            load,
            f"{p['achieved_rps']:.2f}",
            f"{p['output_tokens_per_s']:.0f}",
            *(
                f"{p[k]:.0f}" if p[k] is not None else "-"
                for k in ("ttft_p50_ms", "ttft_p95_ms", "tpot_p95_ms", "e2e_p95_ms")
            ),
            f"{p['error_rate']:.1%}",
            {True: "met", False: "missed", None: "-"}[p["slo_met"]],
        )
    console.print(table)
    unit = "users" if args.shape == "concurrency" else "req/s"
    if outcome.saturation:
        console.print(f"saturation at point {outcome.saturation['point']}: {outcome.saturation['reason']}")
    else:
        console.print(f"no saturation up to {args.stop:g} {unit}: raise --to to find it")
    if slos:
        capacity = (
            f"{outcome.slo_capacity:.3g} {unit}"
            if outcome.slo_capacity is not None
            else "none (no load point met every SLO)"
        )
        console.print(f"SLO capacity: {capacity}")
    report = write_sweep_report(args.output)
    console.print(
        f"curve: {args.output / 'curve.parquet'}; summary: {args.output / 'summary.json'}; report: {report}",
        highlight=False,
        soft_wrap=True,
    )
    return 0
