"""`shadowreplay sweep`: load points of rising load to saturation, then the SLO capacity by bisection."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shadowreplay.errors import UserError
from shadowreplay.verbs.length_options import add_length_options
from shadowreplay.verbs.worker_options import add_busy_poll, add_worker_cpus

if TYPE_CHECKING:
    import pyarrow as pa
    from rich.console import Console

    from shadowreplay.analysis.summary.models import SweepSummary
    from shadowreplay.loadgen.sweep import SweepSettings
    from shadowreplay.replay.schemas.manifest import Manifest
    from shadowreplay.replay.targets.config import TargetConfig


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="sweep load against one target to saturation and find its SLO capacity",
        description=(
            "Run load points of rising load (Poisson arrivals or LOG's own arrival pattern at --from..--to "
            "requests/s, or --from..--to closed-loop users), the requests from LOG's own prompt/output mix, until "
            "the server saturates: errors above --max-error-rate, requests done (lag for lag) under --follow-ratio "
            "of those sent (open loop), "
            "TTFT p95 over --latency-factor times the lowest load's, or output tokens/s no longer rising above "
            "the earlier peak (each criterion that fires is named with its figures). A saturated point, and a "
            "point that missed the SLOs below one that met them, is measured once more; a repeat that does not "
            "reproduce it marks it an outlier. Then bisect for the highest load that meets every --slo without "
            "saturating, never above a confirmed miss (the replica's SLO capacity). "
            "Each point is a run directory under SWEEP_DIR/points/; the curve is "
            "SWEEP_DIR/curve.parquet, SWEEP_DIR/summary.json holds saturation and slo_capacity, and "
            "SWEEP_DIR/report.html draws the curve (a self-contained page that opens with no network). "
            "`--resume SWEEP_DIR` (nothing else) takes up a sweep that was killed or interrupted, with the "
            "settings its manifest recorded: points that finished are read back from their rows, the point "
            "that did not is set aside (SWEEP_DIR/discarded/) and measured again, then the search goes on."
        ),
    )
    parser.add_argument("log", type=Path, nargs="?", help="traffic log (Parquet) whose prompt/output mix is replayed")
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="SWEEP_DIR",
        help="take up the sweep in SWEEP_DIR where it stopped (everything else from its manifest)",
    )
    parser.add_argument("--target", "-t", type=Path, metavar="T.yaml", help="the target to sweep")
    parser.add_argument(
        "--shape",
        choices=("poisson", "trace", "concurrency"),
        default="poisson",
        help="open-loop Poisson rates (requests drawn from the log at random); the log's own arrival pattern, "
        "its bursts kept, time-scaled to each rate (trace: each arrival with its own request, from the log's "
        "first arrival, played again from the top if the log is shorter); or closed-loop users",
    )
    parser.add_argument("--from", dest="start", type=float, metavar="A", help="first load: requests/s, or users")
    parser.add_argument("--to", dest="stop", type=float, metavar="B", help="last load of the rising series")
    parser.add_argument("--points", type=int, default=6, help="load points from A to B, geometric (default 6)")
    parser.add_argument("--duration", default="20s", help="length of each load point (default 20s)")
    parser.add_argument(
        "--slo", action="append", default=[], metavar="SPEC", help="e.g. ttft_p95=500ms,tpot_p95=50ms (repeatable)"
    )
    parser.add_argument("--bisect-steps", type=int, default=3, help="bisection steps for the SLO capacity (default 3)")
    parser.add_argument(
        "--follow-ratio",
        type=float,
        default=0.9,
        metavar="R",
        help="saturated when the requests done, lag for lag, fall under R x those sent (open loop; default 0.9)",
    )
    parser.add_argument(
        "--latency-factor",
        type=float,
        default=10.0,
        metavar="F",
        help="saturated when TTFT p95 passes F x the lowest-load point's (at least 100 ms; default 10)",
    )
    parser.add_argument(
        "--max-error-rate",
        type=float,
        default=0.10,
        metavar="E",
        help="saturated when the error rate passes E (default 0.10)",
    )
    parser.add_argument(
        "--no-recheck",
        dest="recheck",
        action="store_false",
        help="do not measure a saturated or contradicted point again (its first measurement stands)",
    )
    parser.add_argument("--seed", type=int, default=0)
    add_length_options(parser)
    parser.add_argument(
        "--address", metavar="RAY_ADDRESS", help="join this Ray cluster instead of starting a local instance"
    )
    parser.add_argument("-o", "--output", type=Path, metavar="SWEEP_DIR")
    add_busy_poll(parser)
    add_worker_cpus(parser)
    parser.set_defaults(func=run)


REQUIRED = {"log": "LOG", "target": "--target", "start": "--from", "stop": "--to", "output": "-o"}


def run(args: argparse.Namespace) -> int:
    from shadowreplay.analysis.metrics.slo import parse_slos
    from shadowreplay.loadgen.sweep import SweepSettings
    from shadowreplay.replay.run.plan import LengthClamp, parse_duration_s, select_rows
    from shadowreplay.replay.targets.config import load_targets

    if args.resume is not None:
        return _resume(args)
    missing = [flag for name, flag in REQUIRED.items() if getattr(args, name) is None]
    if missing:
        raise UserError(f"sweep needs {', '.join(missing)} (or --resume SWEEP_DIR)")
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
        follow_ratio=args.follow_ratio,
        latency_factor=args.latency_factor,
        max_error_rate=args.max_error_rate,
        recheck=args.recheck,
        clamp=LengthClamp(args.max_prompt_tokens, args.max_completion_tokens, args.output_lengths),
        busy_poll=args.busy_poll,
    )
    targets = load_targets([args.target])
    rows = select_rows(args.log)
    if args.output.exists() and any(args.output.iterdir()):
        raise UserError(
            f"{args.output} is not empty; choose a new sweep directory (or take it up: sweep --resume {args.output})"
        )
    args.output.mkdir(parents=True, exist_ok=True)
    facts = {"log": str(args.log.resolve()), "log_rows": rows.num_rows, "settings": settings.record()}
    return _sweep(targets, rows, settings, args.output, args.address, args.worker_cpus, facts)


def _resume(args: argparse.Namespace) -> int:
    """`sweep --resume SWEEP_DIR`: the settings, target and log from the sweep's manifest (resume.sweep)."""
    from shadowreplay.loadgen.sweep import SweepSettings
    from shadowreplay.replay.run.plan import select_rows
    from shadowreplay.replay.schemas.run_dir import RunDir
    from shadowreplay.replay.targets.config import target_from_public_dict

    given = [flag for name, flag in REQUIRED.items() if getattr(args, name) is not None]
    if given:
        raise UserError(f"--resume SWEEP_DIR takes everything else from the sweep's manifest; drop {', '.join(given)}")
    sweep_dir = RunDir(args.resume)
    manifest = sweep_dir.read_manifest()
    if manifest is None or manifest.resume is None or manifest.resume.sweep is None:
        raise UserError(f"{args.resume}: not a sweep directory with resume facts (manifest.json resume.sweep)")
    if manifest.status == "completed":
        raise UserError(f"{args.resume}: the sweep completed; nothing to resume (shadowreplay report {args.resume})")
    facts = manifest.resume
    sweep = dict(facts.sweep or {})
    targets = [target_from_public_dict(t, f"{sweep_dir.manifest_path} resume.targets") for t in facts.targets]
    rows = select_rows(Path(sweep["log"]))
    if rows.num_rows != sweep["log_rows"]:
        raise UserError(
            f"{sweep['log']}: {rows.num_rows:,} rows, but the sweep started from {sweep['log_rows']:,}: "
            "the log changed; a resumed sweep must draw from the same log"
        )
    settings = SweepSettings.from_record(sweep["settings"])
    manifest.error = None  # this start's own ending is written at its exit
    return _sweep(targets, rows, settings, args.resume, facts.address, facts.worker_cpus, sweep, manifest)


def _sweep(
    targets: list[TargetConfig],
    rows: pa.Table,
    settings: SweepSettings,
    output: Path,
    address: str | None,
    worker_cpus: list[int] | None,
    facts: dict[str, Any],
    manifest: Manifest | None = None,
) -> int:
    """Run (or, with the sweep's `manifest`, resume) the sweep into `output`; print the curve and findings."""
    from rich.console import Console

    from shadowreplay.analysis.data.sweep_data import read_sweep
    from shadowreplay.analysis.report.sweep_page import write_sweep_report
    from shadowreplay.loadgen.sweep import LoadSweep
    from shadowreplay.replay.run.session import Session
    from shadowreplay.replay.schemas.manifest import ResumeFacts
    from shadowreplay.replay.schemas.run_dir import RunDir

    console = Console() if Console().is_terminal else Console(width=140)

    def show(point: dict) -> None:
        level = f"{point['concurrency']} users" if point["concurrency"] else f"{point['offered_rps']:.3g} req/s"
        console.print(
            f"sweep point {point['point']} ({point['phase']}): {level}: {point['achieved_rps']:.2f} req/s, "
            f"{point['output_tokens_per_s']:.0f} tok/s, TTFT p95 {point['ttft_p95_ms'] or 0:.0f} ms, "
            f"errors {point['error_rate']:.1%}, "
            f"SLO {'met' if point['slo_met'] else 'missed' if point['slo_met'] is False else '-'}"
            + (f", saturated: {point['saturation']}" if point["saturation"] else ""),
            highlight=False,
            soft_wrap=True,
        )

    def note(text: str) -> None:
        console.print(text, highlight=False, soft_wrap=True)

    # The session reads the key (one clear line if it cannot), starts the server and Ray, and
    # stops them and writes SWEEP_DIR/manifest.json on any exit; it is written `running` first, with
    # what --resume needs, so a killed sweep can be taken up.
    sweep_dir = RunDir(output)
    with Session(targets, sweep_dir, ray_address=address, worker_cpus=worker_cpus, manifest=manifest) as session:
        session.manifest.status = "running"
        session.manifest.resume = ResumeFacts(
            targets=[t.public_dict() for t in targets], address=address, worker_cpus=worker_cpus, sweep=facts
        )
        session.write_manifest(sweep_dir, session.manifest)
        sweep = LoadSweep(rows, session, settings, output, on_point=show, on_note=note, resume=manifest is not None)
        outcome = sweep.run()
    if sweep.reused:
        console.print(
            f"resumed: points {', '.join(map(str, sweep.reused))} read back from an earlier start, "
            f"{len(outcome.curve) - len(sweep.reused)} measured now",
            highlight=False,
        )
    summary, curve = read_sweep(output)
    print_sweep(summary, curve.to_dicts(), console)
    if outcome.saturation is None:
        console.print("raise --to to find the saturation point", highlight=False)
    report = write_sweep_report(output)
    console.print(
        f"curve: {output / 'curve.parquet'}; summary: {output / 'summary.json'}; report: {report}",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def print_sweep(summary: SweepSummary, curve: list[dict], console: Console) -> None:
    """The sweep's curve as a table, then what it found: the saturation point and the criteria that
    fired there, the repeats and their verdicts, the SLO capacity (`sweep` and `report SWEEP_DIR`)."""
    from rich.table import Table

    concurrency = summary.shape == "concurrency"
    unit = "users" if concurrency else "req/s"

    def level_text(value: float) -> str:
        return f"{int(value)} users" if concurrency else f"{value:.3g} req/s"

    table = Table(title=f"Sweep of {summary.target} ({summary.shape})")
    columns = ("point", "load", "req/s", "sent/s", "kept/s", "tok/s", "TTFT p95", "e2e p95", "errors")
    for column in (*columns, "SLO", "saturated", "notes"):
        table.add_column(column, justify="right" if column in columns else "left", no_wrap=column == "point")
    saturated_point = summary.saturation.point if summary.saturation else None
    for p in curve:
        notes = []
        if p["point"] == saturated_point:
            notes.append("saturation")
        if p.get("repeat_of") is not None:
            notes.append(f"repeat of {p['repeat_of']}")
        if p.get("outlier"):
            notes.append("outlier")
        table.add_row(
            f"{p['point']} {p['phase']}",
            f"{p['concurrency']} users" if concurrency else f"{p['offered_rps']:.3g}/s",
            "-" if p["achieved_rps"] is None else f"{p['achieved_rps']:.2f}",
            *("-" if p.get(k) is None else f"{p[k]:.2f}" for k in ("sent_rps", "kept_rps")),
            "-" if p["output_tokens_per_s"] is None else f"{p['output_tokens_per_s']:.0f}",
            *(f"{p[k]:.0f}" if p[k] is not None else "-" for k in ("ttft_p95_ms", "e2e_p95_ms")),
            "-" if p["error_rate"] is None else f"{p['error_rate']:.1%}",
            {True: "met", False: "missed", None: "-"}[p["slo_met"]],
            p.get("saturation") or "",
            ", ".join(notes),
        )
    console.print(table)
    saturation = summary.saturation
    if saturation is not None:
        confirmed = f", confirmed by point {saturation.confirmed_by}" if saturation.confirmed_by is not None else ""
        console.print(
            f"saturation at point {saturation.point} ({level_text(saturation.level)}){confirmed}: {saturation.reason}",
            highlight=False,
            soft_wrap=True,
        )
    else:
        measured = [p["concurrency"] if concurrency else p["offered_rps"] for p in curve]
        top = f" up to {level_text(max(measured))}" if measured else ""
        limits = summary.criteria
        checked = ", ".join(f"{k} {v:g}" for k, v in limits.items())
        console.print(f"no saturation{top}" + (f" (criteria: {checked})" if checked else ""), highlight=False)
    for repeat in summary.repeats:
        console.print(repeat.text, highlight=False, soft_wrap=True)
    if summary.slos:
        capacity = summary.slo_capacity
        text = (
            f"{capacity:.3g} {unit}"
            if capacity is not None
            else "none (no load point met every SLO without saturating)"
        )
        console.print(f"SLO capacity: {text} (SLOs: {summary.slos})", highlight=False, soft_wrap=True)
