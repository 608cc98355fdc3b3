"""Where the requests of an interactive (Locust) load test come from.

Either a traffic log's own prompt/output mix, each request drawn at random (with replacement) from
the log's rows, or one synthesized length pair (a prompt of exactly P tokens in the target's
tokenizer asking for exactly C output tokens). A drawn request is a plan row (replay/run/plan.py):
the traffic-log columns plus `scheduled_s`, `expected_prompt_tokens`, `expected_completion_tokens`
and `clamped`, ready for `shadowreplay.replay.requests.builder.RequestBuilder.build`.

Closed loop: a user sends its next request when the previous one is done, so a request is
scheduled at the moment it is drawn. Sessions are dropped (a load test measures the server, and a
session would serialise the requests of one conversation across users), as in sweeps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shadowreplay.replay.run.plan import LengthClamp, build_plan, select_rows

DEFAULT_CLAMP = LengthClamp()  # frozen dataclass: no bounds, safe to share as a default


@dataclass(frozen=True)
class SynthesizedLengths:
    """Every request asks for a prompt of `prompt_tokens` tokens and `completion_tokens` output tokens."""

    prompt_tokens: int
    completion_tokens: int

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1 or self.completion_tokens < 1:
            raise ValueError(
                f"synthesized lengths must be at least 1 token each, got prompt {self.prompt_tokens}, "
                f"completion {self.completion_tokens}"
            )


class RequestMix:
    """Draws plan rows: from a traffic log's rows (`from_log`) or one synthesized length pair."""

    def __init__(self, plan: pa.Table | None, lengths: SynthesizedLengths | None, description: str):
        if (plan is None) == (lengths is None):
            raise ValueError("a request mix is either a plan or synthesized lengths")
        self._plan = plan
        self._lengths = lengths
        self.description = description

    @classmethod
    def from_log(cls, log_path: str | Path, clamp: LengthClamp = DEFAULT_CLAMP) -> RequestMix:
        """The log's rows, with the length clamps applied where prompts are synthesized; raises
        shadowreplay.replay.schemas.traffic_log.TrafficLogError or shadowreplay.replay.run.plan.PlanError for a log
        that cannot be used."""
        rows = select_rows(log_path)
        plan = build_plan(rows, np.zeros(rows.num_rows), clamp)
        return cls(plan, None, f"{rows.num_rows} rows of {log_path}")

    @classmethod
    def synthesized(cls, lengths: SynthesizedLengths) -> RequestMix:
        return cls(
            None,
            lengths,
            f"synthesized prompts of {lengths.prompt_tokens} tokens, {lengths.completion_tokens} output tokens",
        )

    @property
    def needs_tokenizer(self) -> bool:
        """Whether some request has no recorded text, so the target's tokenizer must synthesize it."""
        if self._plan is None:
            return True
        without_text = pc.and_(pc.is_null(self._plan.column("messages")), pc.is_null(self._plan.column("prompt")))
        return bool(pc.any(without_text).as_py())

    def draw(self, rng: random.Random, request_id_prefix: str, scheduled_s: float) -> dict:
        """One request as a plan row, scheduled at `scheduled_s`, with the request id
        `<request_id_prefix>-<the log row's id>` (or `<request_id_prefix>` for synthesized lengths)."""
        if self._plan is None:
            lengths = self._lengths
            assert lengths is not None  # __init__: a plan or lengths, never neither
            return {
                "request_id": request_id_prefix,
                "session_id": None,
                "api": None,
                "messages": None,
                "prompt": None,
                "params": None,
                "prompt_tokens": lengths.prompt_tokens,
                "completion_tokens": lengths.completion_tokens,
                "prefix_block_ids": None,
                "tag": None,
                "scheduled_s": scheduled_s,
                "expected_prompt_tokens": lengths.prompt_tokens,
                "expected_completion_tokens": lengths.completion_tokens,
                "clamped": False,
            }
        row = self._plan.slice(rng.randrange(self._plan.num_rows), 1).to_pylist()[0]
        row.update(
            request_id=f"{request_id_prefix}-{row['request_id']}",
            session_id=None,
            scheduled_s=scheduled_s,
        )
        for large in ("response_text", "reference"):  # not sent, not recorded
            row.pop(large, None)
        return row
