"""`shadowreplay shadow`: a baseline and a candidate replayed on the same traffic at the same moments, then
judged by the gates (loadgen/shadow_replay.py, analysis/shadow/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from shadowreplay.errors import UserError
from shadowreplay.verbs.gate_options import add_gate_options, print_judgement
from shadowreplay.verbs.length_options import add_length_options
from shadowreplay.verbs.worker_options import add_worker_cpus


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "shadow",
        help="replay a log to a baseline and a candidate at the same moments and judge the gates",
        description=(
            "Send every selected request of LOG to --baseline and --candidate (and with --aa to a second copy of "
            "the baseline, the noise floor) at the same scheduled time, keeping each answer; check every chat "
            "structure of the log against each target's chat template first (RUN_DIR/prompt_format.json); then "
            "judge --gates as `shadowreplay gate` does: gates.json, summary.md, summary.html in RUN_DIR (and every "
            "window while it runs, in RUN_DIR/live). A gates file's `judge` (an LLM grading every answer by a rubric) "
            "runs after the replay, as a run of its own in RUN_DIR/judge. "
            "--baseline production judges the candidate against the answers captured in the log (response_text). "
            "Models end their answers (--output-lengths natural) unless told otherwise. "
            "`--resume RUN_DIR --gates G.yaml` takes up a shadow that was killed or interrupted: the pairs without "
            "a final row are replayed (replay --resume), the judge's run resumed, then the gates judged. "
            "Exit 0 when the verdict is pass, 3 when it is fail, 130 when interrupted."
        ),
    )
    parser.add_argument("log", type=Path, nargs="?", help="traffic log (Parquet, from `shadowreplay ingest`)")
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="take up a killed or interrupted shadow (with --gates; LOG, targets and selection from its manifest)",
    )
    parser.add_argument("--baseline", metavar="B.yaml", help="the baseline's target file, or `production`")
    parser.add_argument("--candidate", type=Path, metavar="C.yaml", help="the candidate's target file")
    parser.add_argument("--aa", action="store_true", help="also replay a second copy of the baseline: the noise floor")
    parser.add_argument("-o", "--output", type=Path, metavar="RUN_DIR", help="run directory to create")
    parser.add_argument("--speed", type=float, default=1.0, help="time compression: 2 sends twice as fast (default 1)")
    parser.add_argument(
        "--window", metavar="START..END", help="replay only arrivals in this slice (seconds from the first arrival)"
    )
    parser.add_argument("--limit", type=int, metavar="N", help="replay at most the first N requests (after --window)")
    parser.add_argument("--duration", metavar="D", help="stop scheduling sends after D of replay time")
    parser.add_argument("--workers", type=int, metavar="N", help="replay worker processes (default: one per CPU)")
    parser.add_argument("--address", metavar="RAY_ADDRESS", help="join this Ray cluster instead of a local one")
    add_length_options(parser, output_lengths="natural")
    add_worker_cpus(parser)
    add_gate_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    from shadowreplay.analysis.cost.prices import chosen_prices
    from shadowreplay.analysis.shadow.gates_file import load_gates
    from shadowreplay.analysis.shadow.judge_run import judge_run
    from shadowreplay.analysis.shadow.paired_requests import Sides
    from shadowreplay.loadgen.live_gates import LiveGates
    from shadowreplay.loadgen.shadow_replay import (
        ShadowRequest,
        judge_answers,
        prepare,
        replay_shadow,
        shadow_targets,
    )
    from shadowreplay.loadgen.shapes import at_speed
    from shadowreplay.replay.targets.config import load_target

    if args.resume is not None:
        return _resume(args)
    missing = [
        f
        for f, v in (
            ("LOG", args.log),
            ("--baseline", args.baseline),
            ("--candidate", args.candidate),
            ("-o", args.output),
        )
        if not v
    ]
    if missing:
        raise UserError(f"shadow needs {', '.join(missing)} (or --resume RUN_DIR)")
    if args.speed <= 0:
        raise UserError("--speed must be positive")
    send_times, schedule = at_speed(args.speed)
    for name in ("limit", "workers"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name} must be positive")
    gates = load_gates(args.gates)  # a bad gates file stops the shadow before anything is sent
    prices = chosen_prices(args.prices)

    request = ShadowRequest(
        log=args.log,
        baseline=args.baseline,
        candidate=args.candidate,
        run_dir=args.output,
        aa=args.aa,
        window=args.window,
        limit=args.limit,
        duration=args.duration,
        workers=args.workers,
        address=args.address,
        output_lengths=args.output_lengths,
        max_prompt_tokens=args.max_prompt_tokens,
        max_completion_tokens=args.max_completion_tokens,
        send_times=send_times,
        schedule=schedule,
        worker_cpus=args.worker_cpus,
    )
    chosen = shadow_targets(request)
    if gates.judge is not None:
        load_target(gates.judge.target)  # a bad judge target stops the shadow before anything is sent
    found = prepare(request, chosen)
    for target in chosen.targets:
        rejected = found.rejected_requests(target.name)
        if rejected:
            print(f"shadow: WARNING {target.name}'s chat template rejects {rejected:,} requests (prompt_format.json)")
    sides = Sides(chosen.baseline, chosen.candidate, chosen.aa)
    with LiveGates(args.output, sides, gates) as live:
        outcome = replay_shadow(request, chosen)
    if live.judgements:
        print(f"shadow: judged {live.judgements} times while it ran ({args.output}/live/gates.json)", flush=True)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(outcome.by_status.items()))
    print(f"shadow: {sum(outcome.by_status.values())} result rows in {args.output}/results ({counts})", flush=True)
    if outcome.cancelled:
        return 130
    if gates.uses_judge:
        assert gates.judge is not None
        judged = judge_answers(request, chosen, gates.judge)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(judged.by_status.items()))
        print(f"shadow: the judge answered {sum(judged.by_status.values())} rubric prompts ({counts})", flush=True)
        if judged.cancelled:
            return 130
    judgement = judge_run(args.output, sides, gates, args.output, prices)
    return print_judgement(judgement, "shadow", args.json)


def _resume(args: argparse.Namespace) -> int:
    """`shadow --resume RUN_DIR --gates G.yaml`: the replay's missing pairs, the judge's run, then the gates."""
    from shadowreplay.analysis.cost.prices import chosen_prices
    from shadowreplay.analysis.shadow.gates_file import load_gates
    from shadowreplay.analysis.shadow.judge_run import judge_run
    from shadowreplay.analysis.shadow.paired_requests import Sides
    from shadowreplay.loadgen.shadow_replay import resume_judge, resumed_request, shadow_targets
    from shadowreplay.replay.run.replay_session import ResumeError, resume_run
    from shadowreplay.replay.schemas.run_dir import RunDir

    given = [name for name in ("log", "baseline", "candidate", "output") if getattr(args, name)]
    if given:
        raise UserError("--resume RUN_DIR takes LOG, the targets and the selection from the run's manifest; drop them")
    gates = load_gates(args.gates)
    prices = chosen_prices(args.prices)
    manifest = RunDir(args.resume).read_manifest()
    if manifest is None or manifest.resume is None or manifest.resume.shadow is None:
        raise ResumeError(
            f"{args.resume}: not a shadow's run directory with resume facts (manifest.json resume.shadow)"
        )
    request = resumed_request(manifest.resume.shadow, args.resume)
    chosen = shadow_targets(request)
    outcome = resume_run(args.resume)
    if outcome.cancelled:
        return 130
    if gates.uses_judge:
        assert gates.judge is not None
        if resume_judge(request, chosen, gates.judge).cancelled:
            return 130
    sides = Sides(chosen.baseline, chosen.candidate, chosen.aa)
    judgement = judge_run(args.resume, sides, gates, args.resume, prices)
    return print_judgement(judgement, "shadow", args.json)
