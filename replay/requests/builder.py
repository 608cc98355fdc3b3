"""Turns a plan row into the OpenAI-shaped request body for one target.

Rows with recorded text (messages or prompt) are sent with their recorded text and params; rows
without text get a synthesized prompt of exactly `expected_prompt_tokens` tokens in the target's
own tokenizer (raised to the chat template's floor where the recorded length is below it, and
flagged `raised`). Output lengths, for both (replay/run/plan.py, docs/DESIGN.md):
- `expected_completion_tokens` given: the request asks for exactly that many tokens. Every length
  field of the body (`max_tokens`, and `max_completion_tokens` where the body has it) is set to
  it, and a target that can force a length (`forces_output_length`: vLLM) also gets `min_tokens`
  and `ignore_eos`. A hosted API may still stop early: the report counts that as a shortfall.
- otherwise the model ends its answer: a body's own length fields are kept, cut to the row's
  `completion_cap` (flagged `clamped`); a body without one, or a synthesized prompt, gets
  `max_tokens` = the cap where there is one.
The body is the canonical OpenAI shape; a wire protocol translates it for other APIs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.requests.prompt_synthesis import PromptSynthesizer, forced_output_fields
from shadowreplay.replay.targets.config import TargetConfig


class RequestNotBuildable(ShadowReplayError, ValueError):
    """A row this target cannot be asked (e.g. chat messages for a completions-only target)."""


@dataclass(frozen=True)
class BuiltRequest:
    """A request body and the lengths it asks for (after the plan's clamps and the template floor):
    `clamped` a bound cut a length, `raised` a length was raised above the recorded one."""

    body: dict
    expected_prompt_tokens: int | None
    expected_completion_tokens: int | None
    clamped: bool
    raised: bool = False

    def recorded_row(self, row: dict) -> dict:
        """`row` with the lengths this request really asked for, as the result row records them."""
        return {
            **row,
            "expected_prompt_tokens": self.expected_prompt_tokens,
            "expected_completion_tokens": self.expected_completion_tokens,
            "clamped": self.clamped,
            "raised": self.raised,
        }


class RequestBuilder:
    def __init__(self, target: TargetConfig, block_size: int = 512):
        self.target = target
        self.block_size = block_size

    @cached_property
    def synthesizer(self) -> PromptSynthesizer:
        if not self.target.tokenizer:
            raise RequestNotBuildable(
                f"target {self.target.name} has no tokenizer: rows without text need one to synthesize prompts"
            )
        return PromptSynthesizer(self.target.tokenizer, block_size=self.block_size)

    def prepare(self) -> None:
        """Load the tokenizer and fit the prompt frames ahead of the run, where a tokenizer is given."""
        if self.target.tokenizer:
            self.synthesizer  # noqa: B018 - builds the cached synthesizer

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` by the target's tokenizer (the client-side count); needs a tokenizer."""
        return self.synthesizer.count_tokens(text)

    def build(self, row: dict) -> BuiltRequest:
        """The request for `row` (a plan row): its body (without the stream flags, which the wire
        protocol adds) and the lengths it asks for."""
        body: dict = {}
        prompt_tokens = row["expected_prompt_tokens"]
        exact = row["expected_completion_tokens"]
        cap = row.get("completion_cap")
        clamped = bool(row["clamped"])
        raised = bool(row.get("raised") or False)
        if exact is not None and exact < 1:  # a hand-made row (the plan raises these itself)
            exact, raised = 1, True
        if row["messages"] is not None or row["prompt"] is not None:
            body.update(json.loads(row["params"]) if row["params"] else {})
            if row["messages"] is not None:
                if self.target.api != "chat":
                    raise RequestNotBuildable(
                        f"row {row['request_id']} is a chat request; target {self.target.name} takes completions"
                    )
                body["messages"] = json.loads(row["messages"])
            else:
                if self.target.api != "completions":
                    raise RequestNotBuildable(
                        f"row {row['request_id']} is a completions request; target {self.target.name} takes chat"
                    )
                body["prompt"] = row["prompt"]
        else:
            if prompt_tokens is None:
                raise RequestNotBuildable(f"row {row['request_id']} has neither text nor a prompt length")
            # A recorded length below the chat template's own overhead cannot be produced: raise it
            # to the shortest prompt the target's template allows, and say so in `raised`.
            shortest = self.synthesizer.min_prompt_tokens(self.target.api)
            if prompt_tokens < shortest:
                prompt_tokens, raised = shortest, True
            body.update(
                self.synthesizer.synthesize(
                    request_id=row["request_id"],
                    prompt_tokens=prompt_tokens,
                    api=self.target.api,
                    prefix_block_ids=row.get("prefix_block_ids"),
                )
            )
        if exact is not None:
            self._ask_exactly(body, exact)
        elif cap is not None:
            clamped = _cap_lengths(body, cap) or clamped
        body.update(self.target.extra_body)
        body["model"] = self.target.model
        return BuiltRequest(body, prompt_tokens, exact, clamped, raised)

    def _ask_exactly(self, body: dict, output_tokens: int) -> None:
        """Ask for exactly `output_tokens`: every length field the body has (or `max_tokens`) set to
        it, and vLLM's forcing fields where the target supports them."""
        present = [name for name in LENGTH_FIELDS if name in body]
        for name in present or ["max_tokens"]:
            body[name] = output_tokens
        if self.target.forces_output_length:
            body.update(forced_output_fields(output_tokens))


LENGTH_FIELDS = ("max_tokens", "max_completion_tokens")  # OpenAI's old and new name; vLLM reads both


def _cap_lengths(body: dict, cap: int) -> bool:
    """Cut the body's own length fields to `cap` (True when one was above it); a body without one
    gets `max_tokens` = `cap`, as the bound it is (the plan flags it where the recorded output was longer)."""
    present = [name for name in LENGTH_FIELDS if body.get(name) is not None]
    if not present:
        body["max_tokens"] = cap
        return False
    cut = False
    for name in present:
        value = body[name]
        if isinstance(value, int | float) and not isinstance(value, bool) and value > cap:
            body[name] = cap
            cut = True
    return cut
