"""`shadowreplay replay`: open-loop replay of a traffic log against one or more targets on Ray."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from shadowreplay.errors import UserError
from shadowreplay.verbs.length_options import add_length_options
from shadowreplay.verbs.load_check_options import add_max_lateness, checks_from
from shadowreplay.verbs.worker_options import add_busy_poll, add_worker_cpus

if TYPE_CHECKING:
    from shadowreplay.analysis.summary.load_fidelity import LoadCheck
    from shadowreplay.replay.run.runner import RunOutcome


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="replay a traffic log open-loop against targets, recording every token's arrival",
        description=(
            "Send every request of LOG at its recorded moment (relative to the first arrival, divided by "
            "--speed; --volume for more or fewer requests on the same timeline) to every target, on Ray workers "
            "sharing one timeline. Sessions replay in order. Rows "
            "without text get synthesized prompts of their recorded length in each target's tokenizer; every "
            "row asks for exactly its recorded output length unless --output-lengths natural. One result row "
            "per request, target and attempt "
            "lands in RUN_DIR/results/*.parquet; RUN_DIR/manifest.json records what ran. A worker process "
            "that dies: its requests in flight end `worker_lost`, its unsent ones go to a replacement. "
            "`--resume RUN_DIR` (nothing else) replays exactly the pairs a crashed, killed or interrupted run "
            "left without a final row. Exit 0; 130 interrupted; 3 --strict failed; "
            f"{INCOMPLETE_EXIT} requests ended worker_lost (resume the run)."
        ),
    )
    parser.add_argument("log", type=Path, nargs="?", help="traffic log (Parquet, from `shadowreplay ingest`)")
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help=(
            "take up a run whose driver was killed, that was interrupted or that lost requests: replay its pairs "
            "without a final row (and its cancelled and worker_lost ones) on a new epoch, as the manifest's next "
            "segment; give no LOG, --target or -o"
        ),
    )
    parser.add_argument(
        "--target",
        "-t",
        action="append",
        type=Path,
        metavar="T.yaml",
        help="target file (repeat for several targets; see configs/targets/)",
    )
    parser.add_argument("-o", "--output", type=Path, metavar="RUN_DIR", help="run directory to create")
    parser.add_argument("--speed", type=float, default=1.0, help="time compression: 2 sends twice as fast (default 1)")
    parser.add_argument(
        "--volume",
        metavar="V",
        help=(
            "more or fewer requests on the log's own timeline (bursts where they were, as long): a factor (2x, 0.5x), "
            "a mean rate (120rps) or tokens a month (300M-tokens/month, 40M-output-tokens/month) of the selected "
            "rows; below their own, whole conversations are thinned out, above it shifted copies are superposed "
            "(loadgen/volume.py). Applied before --speed"
        ),
    )
    parser.add_argument(
        "--window",
        metavar="START..END",
        help="replay only arrivals in this slice, in seconds from the first arrival (e.g. 60..120, ..5m)",
    )
    parser.add_argument("--limit", type=int, metavar="N", help="replay at most the first N requests (after --window)")
    parser.add_argument("--duration", metavar="D", help="stop scheduling sends after D of replay time (e.g. 60s, 5m)")
    parser.add_argument("--workers", type=int, metavar="N", help="replay worker processes (default: one per CPU)")
    parser.add_argument(
        "--address", metavar="RAY_ADDRESS", help="join this Ray cluster instead of starting a local instance"
    )
    add_length_options(parser)
    parser.add_argument("--keep-output-text", action="store_true", help="store each response's text in the results")
    parser.add_argument(
        "--block-size",
        type=int,
        default=512,
        help="tokens per prefix block for synthesized prompts (default 512, as Mooncake)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help=(
            "exit 3 when the load was not offered as recorded (send lateness p99 above 10 ms, or most ITL gaps "
            "0 ms while vLLM's are not; the checks of `report`), after writing every row"
        ),
    )
    add_max_lateness(parser)
    add_busy_poll(parser)
    add_worker_cpus(parser)
    parser.set_defaults(func=run)


INCOMPLETE_EXIT = 4


def run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        return _resume(args)
    missing = [name for name, value in (("LOG", args.log), ("--target", args.target), ("-o", args.output)) if not value]
    if missing:
        raise UserError(f"replay needs {', '.join(missing)} (or --resume RUN_DIR)")

    from shadowreplay.analysis.capacity.traffic_volume import TrafficVolume
    from shadowreplay.loadgen.shapes import at_speed
    from shadowreplay.loadgen.volume import volume_hook
    from shadowreplay.replay.run.replay_session import ReplayRequest, replay_log

    if args.speed <= 0:
        raise UserError("--speed must be positive")
    send_times, schedule = at_speed(args.speed)
    volume = TrafficVolume.parse(args.volume) if args.volume else None
    checks = checks_from(args)  # checked before the run, used after it with --strict
    for name in ("limit", "workers", "max_prompt_tokens", "max_completion_tokens"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    request = ReplayRequest(
        log=args.log,
        target_files=args.target,
        run_dir=args.output,
        window=args.window,
        limit=args.limit,
        duration=args.duration,
        workers=args.workers,
        address=args.address,
        max_prompt_tokens=args.max_prompt_tokens,
        max_completion_tokens=args.max_completion_tokens,
        output_lengths=args.output_lengths,
        keep_output_text=args.keep_output_text,
        block_size=args.block_size,
        busy_poll=args.busy_poll,
        worker_cpus=args.worker_cpus,
        send_times=send_times,
        schedule=schedule,
        volume=volume_hook(volume, lambda line: print(line, flush=True)) if volume is not None else None,
    )
    outcome = replay_log(request)  # its errors are ShadowReplayErrors: the CLI prints them as one line
    code = _ending(outcome, args.output)
    if code:
        return code
    return _strict_check(args.output, checks) if args.strict else 0


def _resume(args: argparse.Namespace) -> int:
    from shadowreplay.replay.run.replay_session import resume_run

    given = [name for name in ("log", "target", "output") if getattr(args, name)]
    if given:
        raise UserError("--resume RUN_DIR takes everything else from the run's manifest; drop LOG, --target and -o")
    return _ending(resume_run(args.resume), args.resume)


def _ending(outcome: RunOutcome, run_dir: Path) -> int:
    """The run's last lines, from the final rows on disk, and its exit code."""
    counts = ", ".join(f"{k} {v}" for k, v in sorted(outcome.by_status.items()))
    print(f"replay: {sum(outcome.by_status.values())} final rows in {run_dir}/results ({counts})", flush=True)
    lost = outcome.by_status.get("worker_lost", 0)
    if outcome.cancelled:
        print(f"replay: interrupted; `shadowreplay replay --resume {run_dir}` replays what is left", flush=True)
        return 130
    if lost:
        print(
            f"replay: {lost} request(s) ended worker_lost (their worker process died); "
            f"`shadowreplay replay --resume {run_dir}` replays them (exit {INCOMPLETE_EXIT})",
            flush=True,
        )
        return INCOMPLETE_EXIT
    print(f"replay: next: shadowreplay report {run_dir}", flush=True)
    return 0


STRICT_EXIT = 3


def _strict_check(run_dir: Path, checks: Sequence[LoadCheck]) -> int:
    """`--strict`: the report's load checks over the rows just written; STRICT_EXIT if any fires."""
    from shadowreplay.analysis.data.run_data import ANALYSIS_COLUMNS, load_run
    from shadowreplay.analysis.data.telemetry_data import load_telemetry
    from shadowreplay.analysis.summary.run_summary import summarize

    summary = summarize(load_run(run_dir, columns=ANALYSIS_COLUMNS), telemetry=load_telemetry(run_dir), checks=checks)
    for warning in summary.load_warnings:
        print(f"replay: WARNING {warning.message}", flush=True)
    if summary.load_warnings:
        print(f"replay: --strict: the load was not offered as recorded (exit {STRICT_EXIT})", flush=True)
        return STRICT_EXIT
    return 0
