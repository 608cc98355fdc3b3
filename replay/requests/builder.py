"""Turns a plan row into the OpenAI-shaped request body for one target.

Rows with recorded text (messages or prompt) are sent as recorded, with their recorded params.
Rows without text get a synthesized prompt of exactly `expected_prompt_tokens` tokens in the
target's own tokenizer and ask for exactly `expected_completion_tokens` output tokens
(docs/DESIGN.md). The body is the canonical OpenAI shape; a wire protocol translates it for
other APIs.
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
    """A request body and the lengths it asks for (after the plan's clamps and the template floor)."""

    body: dict
    expected_prompt_tokens: int | None
    expected_completion_tokens: int | None
    clamped: bool

    def recorded_row(self, row: dict) -> dict:
        """`row` with the lengths this request really asked for, as the result row records them."""
        return {
            **row,
            "expected_prompt_tokens": self.expected_prompt_tokens,
            "expected_completion_tokens": self.expected_completion_tokens,
            "clamped": self.clamped,
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
        """The request for `row`: its body (without the stream flags, which the wire protocol adds)
        and the lengths it asks for."""
        body: dict = {}
        prompt_tokens = row["expected_prompt_tokens"]
        output_tokens = row["expected_completion_tokens"]
        clamped = bool(row["clamped"])
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
            if prompt_tokens is None or output_tokens is None:
                raise RequestNotBuildable(f"row {row['request_id']} has neither text nor token counts")
            # A recorded length below the chat template's own overhead cannot be produced: raise it
            # to the shortest prompt the target's template allows, and say so in `clamped`.
            shortest = self.synthesizer.min_prompt_tokens(self.target.api)
            if prompt_tokens < shortest:
                prompt_tokens, clamped = shortest, True
            if output_tokens < 1:
                output_tokens, clamped = 1, True
            body.update(
                self.synthesizer.synthesize(
                    request_id=row["request_id"],
                    prompt_tokens=prompt_tokens,
                    api=self.target.api,
                    prefix_block_ids=row.get("prefix_block_ids"),
                )
            )
            if self.target.forces_output_length:
                body.update(forced_output_fields(output_tokens))
            else:
                body["max_tokens"] = output_tokens
        body.update(self.target.extra_body)
        body["model"] = self.target.model
        return BuiltRequest(body, prompt_tokens, output_tokens, clamped)
