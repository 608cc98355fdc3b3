"""Command-line options for the lengths a replayed request asks for, shared by the verbs that build
requests from a traffic log (replay, sweep, locust): replay/run/plan.py `LengthClamp`."""

from __future__ import annotations

import argparse

OUTPUT_LENGTHS = ("recorded", "natural")  # replay/run/plan.py OUTPUT_LENGTHS (not imported: the CLI stays light)

OUTPUT_LENGTHS_HELP = (
    "recorded (default): every request, with recorded messages or a synthesized prompt, asks for exactly "
    "its logged completion_tokens (max_tokens, and max_completion_tokens where the body has it, set to it; "
    "plus min_tokens and ignore_eos where the target forces lengths: kind vllm, or ignore_eos: true); "
    "a hosted API that stops sooner shows as the report's output shortfall; rows without completion_tokens "
    "go as natural. natural: the model ends its answer (no forced length; a body's own max_tokens kept, "
    "cut to --max-completion-tokens)"
)
MAX_PROMPT_HELP = (
    "cut synthesized prompts to N tokens (flagged clamped per row); recorded text is never cut: a row with "
    "text longer than N is sent whole, not flagged, and counted in the manifest's prompts_over_max"
)
MAX_COMPLETION_HELP = (
    "cut every request's output length to N, text rows included: the recorded length asked for and a "
    "body's own max_tokens/max_completion_tokens (flagged clamped per row); with natural, a body without "
    "max_tokens gets max_tokens N"
)


def add_length_options(parser: argparse.ArgumentParser, output_lengths: str = "recorded") -> None:
    """`--output-lengths` (default `output_lengths`), `--max-prompt-tokens` and `--max-completion-tokens`."""
    help_text = OUTPUT_LENGTHS_HELP
    if output_lengths != "recorded":
        help_text = help_text.replace("recorded (default)", "recorded").replace(
            "natural:", f"{output_lengths} (default):"
        )
    parser.add_argument("--output-lengths", choices=OUTPUT_LENGTHS, default=output_lengths, help=help_text)
    parser.add_argument("--max-prompt-tokens", type=int, metavar="N", help=MAX_PROMPT_HELP)
    parser.add_argument("--max-completion-tokens", type=int, metavar="N", help=MAX_COMPLETION_HELP)
