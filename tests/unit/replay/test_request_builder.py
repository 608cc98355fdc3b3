"""Request bodies from plan rows (replay/requests/builder.py over replay/run/plan.py): output lengths
asked exactly (`recorded`) or left to the model (`natural`), clamps that cut a body's own max_tokens,
and a prompt raised to the chat template's floor, each flagged in the row the results record."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from shadowreplay.replay.requests.builder import RequestBuilder
from shadowreplay.replay.run.plan import LengthClamp, build_plan
from shadowreplay.replay.run.result_rows import result_row
from shadowreplay.replay.schemas.results import RESULTS_SCHEMA, StreamOutcome
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA
from shadowreplay.replay.targets.config import load_target
from tests.support.target_files import write_target
from tests.support.traffic_logs import MESSAGES, log_row


def chat_row(i: int, completion_tokens: int | None, params: dict | None) -> dict:
    row = log_row(i, float(i))
    row.update(params=json.dumps(params) if params is not None else None, completion_tokens=completion_tokens)
    return row


def synthesized_row(i: int, prompt_tokens: int, completion_tokens: int) -> dict:
    row = log_row(i, float(i))
    row.update(messages=None, params=None, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    return row


def plan_rows(rows: list[dict], clamp: LengthClamp | None = None) -> list[dict]:
    clamp = clamp or LengthClamp()
    table = pa.Table.from_pylist(rows, schema=TRAFFIC_LOG_SCHEMA)
    return build_plan(table, np.arange(len(rows), dtype=float), clamp).to_pylist()


@pytest.fixture
def vllm_like(tmp_path, tiny_model_dir):
    """A target that forces output lengths (vLLM's ignore_eos), with the tiny model's tokenizer."""
    return load_target(
        write_target(tmp_path / "v.yaml", "http://127.0.0.1:1/v1", ignore_eos=True, tokenizer=str(tiny_model_dir))
    )


@pytest.fixture
def hosted(tmp_path):
    """An OpenAI-kind target that cannot force a length."""
    return load_target(write_target(tmp_path / "h.yaml", "http://127.0.0.1:1/v1"))


def test_a_chat_row_asks_for_exactly_its_recorded_length(vllm_like, hosted):
    (row,) = plan_rows([chat_row(0, 41, {"max_tokens": 100, "temperature": 0.3})])
    built = RequestBuilder(vllm_like).build(row)
    assert built.body["messages"] == json.loads(MESSAGES)
    assert built.body["max_tokens"] == 41 and built.body["min_tokens"] == 41 and built.body["ignore_eos"] is True
    assert built.body["temperature"] == 0.3  # the rest of the recorded params stay
    assert (built.expected_completion_tokens, built.clamped, built.raised) == (41, False, False)

    plain = RequestBuilder(hosted).build(row)
    assert plain.body["max_tokens"] == 41  # asked for; a hosted API may still stop sooner (the shortfall)
    assert "min_tokens" not in plain.body and "ignore_eos" not in plain.body
    assert plain.expected_completion_tokens == 41


def test_openai_style_max_completion_tokens_is_set_too(vllm_like, hosted):
    (row,) = plan_rows([chat_row(0, 41, {"max_completion_tokens": 100})])
    forced = RequestBuilder(vllm_like).build(row).body
    assert forced["max_completion_tokens"] == 41 and forced["max_tokens"] == 41  # vLLM reads either
    plain = RequestBuilder(hosted).build(row).body
    assert plain["max_completion_tokens"] == 41 and "max_tokens" not in plain  # no second field for OpenAI


def test_a_clamp_cuts_the_recorded_length_of_a_text_row_and_flags_it(hosted):
    rows = plan_rows([chat_row(0, 1968, {"max_tokens": 4096}), chat_row(1, 41, None)], LengthClamp(None, 64))
    long, short = (RequestBuilder(hosted).build(row) for row in rows)
    assert long.body["max_tokens"] == 64 and long.clamped
    assert short.body["max_tokens"] == 41 and not short.clamped


def test_natural_keeps_the_bodys_own_params(vllm_like):
    (row,) = plan_rows([chat_row(0, 41, {"max_tokens": 100, "stop": ["\n"]})], LengthClamp(output_lengths="natural"))
    built = RequestBuilder(vllm_like).build(row)
    assert built.body["max_tokens"] == 100 and built.body["stop"] == ["\n"]
    assert "min_tokens" not in built.body and "ignore_eos" not in built.body
    assert (built.expected_completion_tokens, built.clamped) == (None, False)
    (bare,) = plan_rows([chat_row(0, 41, None)], LengthClamp(output_lengths="natural"))
    assert "max_tokens" not in RequestBuilder(vllm_like).build(bare).body  # the model ends its answer


def test_natural_clamps_cut_a_bodys_own_max_tokens_and_flag_it(hosted):
    clamp = LengthClamp(max_completion_tokens=64, output_lengths="natural")
    rows = plan_rows(
        [
            chat_row(0, 41, {"max_tokens": 100}),
            chat_row(1, 41, {"max_completion_tokens": 100, "max_tokens": 50}),
            chat_row(2, 41, {"max_tokens": 50}),
            chat_row(3, 41, None),
        ],
        clamp,
    )
    built = [RequestBuilder(hosted).build(row) for row in rows]
    assert built[0].body["max_tokens"] == 64 and built[0].clamped  # the 100 -> 64, flagged
    assert built[1].body == {**built[1].body, "max_completion_tokens": 64, "max_tokens": 50} and built[1].clamped
    assert built[2].body["max_tokens"] == 50 and not built[2].clamped
    assert built[3].body["max_tokens"] == 64 and not built[3].clamped  # a bound, not a cut (recorded 41)
    assert all(b.expected_completion_tokens is None for b in built)


def test_a_prompt_below_the_template_floor_is_raised_and_flagged(vllm_like):
    builder = RequestBuilder(vllm_like)
    floor = builder.synthesizer.min_prompt_tokens("chat")
    low, ok = plan_rows([synthesized_row(0, 1, 7), synthesized_row(1, floor + 5, 7)])
    raised = builder.build(low)
    assert raised.raised and not raised.clamped and raised.expected_prompt_tokens == floor
    assert builder.synthesizer.count_prompt_tokens(raised.body, "chat") == floor
    assert raised.body["max_tokens"] == 7 and raised.body["min_tokens"] == 7
    kept = builder.build(ok)
    assert not kept.raised and kept.expected_prompt_tokens == floor + 5

    # The flag reaches the result row the run writes.
    recorded = raised.recorded_row(low)
    result = result_row(
        run_id="r",
        target="t",
        worker="w",
        row=recorded,
        outcome=StreamOutcome(),
        attempt=1,
        final=True,
        to_run_s=lambda t: t,
    )
    assert result["raised"] is True and result["clamped"] is False
    assert set(result) == set(RESULTS_SCHEMA.names)


def test_a_recorded_output_of_zero_is_asked_as_one_and_raised(hosted):
    (row,) = plan_rows([chat_row(0, 0, {"max_tokens": 100})])
    built = RequestBuilder(hosted).build(row)
    assert built.body["max_tokens"] == 1 and built.raised and built.expected_completion_tokens == 1
