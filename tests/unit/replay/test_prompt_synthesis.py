"""Prompt synthesis (replay/requests/prompt_synthesis.py) against the tiny model's real tokenizer.

Counts are checked independently of the synthesizer: with transformers' own
`apply_chat_template(tokenize=True)` for chat and the tokenizer with special tokens for
completions, which is how vLLM counts them (tests/integration/test_tiny_model_vllm.py checks the server).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowreplay.replay.requests.prompt_synthesis import (
    PromptSynthesisError,
    PromptSynthesizer,
    PromptTooShort,
    forced_output_fields,
)

BLOCK_SIZES = [1, 7, 16, 512]
APIS = ["chat", "completions"]
MAX_TOKENS = 2500
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def synthesizers(tiny_model_dir) -> Callable[..., PromptSynthesizer]:
    """One synthesizer per block size, made on first use."""
    made: dict[int, PromptSynthesizer] = {}

    def get(block_size: int = 512) -> PromptSynthesizer:
        if block_size not in made:
            made[block_size] = PromptSynthesizer(tiny_model_dir, block_size=block_size)
        return made[block_size]

    return get


def server_token_ids(hf_tokenizer, body: dict) -> list[int]:
    """Token ids of the prompt as vLLM builds them."""
    if "messages" in body:
        encoded = hf_tokenizer.apply_chat_template(
            body["messages"], tokenize=True, add_generation_prompt=True, return_dict=True
        )
        return list(encoded["input_ids"])
    return hf_tokenizer(body["prompt"])["input_ids"]


def rendered(hf_tokenizer, body: dict) -> str:
    """The prompt text as the server tokenizes it (BOS as text for completions)."""
    if "messages" in body:
        return hf_tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
    return hf_tokenizer.bos_token + body["prompt"]


def content_of(body: dict) -> str:
    return body["messages"][0]["content"] if "messages" in body else body["prompt"]


block_ids = st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=8)


@PROPERTY_SETTINGS
@given(
    api=st.sampled_from(APIS),
    block_size=st.sampled_from(BLOCK_SIZES),
    extra=st.integers(min_value=0, max_value=MAX_TOKENS),
    prefix=block_ids,
    request_id=st.text(min_size=1, max_size=20),
)
def test_exact_token_count_for_any_length(synthesizers, hf_tokenizer, api, block_size, extra, prefix, request_id):
    synthesizer = synthesizers(block_size)
    prompt_tokens = synthesizer.min_prompt_tokens(api) + extra
    body = synthesizer.synthesize(request_id, prompt_tokens, api, prefix)
    assert len(server_token_ids(hf_tokenizer, body)) == prompt_tokens
    assert synthesizer.count_prompt_tokens(body, api) == prompt_tokens


@PROPERTY_SETTINGS
@given(
    api=st.sampled_from(APIS),
    extra=st.integers(min_value=0, max_value=MAX_TOKENS),
    request_id=st.text(min_size=1, max_size=20),
)
def test_text_is_tokenizer_safe(synthesizers, hf_tokenizer, api, extra, request_id):
    """Plain lowercase words and single spaces; one token per word; decode(encode(text)) == text."""
    synthesizer = synthesizers()
    body = synthesizer.synthesize(request_id, synthesizer.min_prompt_tokens(api) + extra, api)
    content = content_of(body)
    assert re.fullmatch(r"[a-z]+( [a-z]+)*", content)
    ids = hf_tokenizer(content, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(content.split(" "))
    assert hf_tokenizer.decode(ids) == content


@PROPERTY_SETTINGS
@given(
    api=st.sampled_from(APIS),
    block_size=st.sampled_from([16, 64, 512]),
    shared=st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=3, unique=True),
    tails=st.tuples(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=10**6)).filter(
        lambda t: t[0] != t[1]
    ),
    extra=st.tuples(st.integers(min_value=0, max_value=600), st.integers(min_value=0, max_value=600)),
)
def test_shared_block_ids_give_an_identical_prefix(synthesizers, hf_tokenizer, api, block_size, shared, tails, extra):
    """Requests whose first k block ids agree have byte-identical text for those k blocks (the
    first k * block_size prompt tokens, template included) and differ in block k+1."""
    synthesizer = synthesizers(block_size)
    k = len(shared)
    length = [(k + 1) * block_size + e for e in extra]
    first = synthesizer.synthesize("request-a", length[0], api, shared + [tails[0] + 10**13])
    second = synthesizer.synthesize("request-b", length[1], api, shared + [tails[1] + 10**13])
    ids_a, ids_b = server_token_ids(hf_tokenizer, first), server_token_ids(hf_tokenizer, second)
    boundary = k * block_size
    assert ids_a[:boundary] == ids_b[:boundary]
    assert ids_a[boundary : boundary + block_size] != ids_b[boundary : boundary + block_size]
    shared_text = hf_tokenizer.decode(ids_a[:boundary])
    assert rendered(hf_tokenizer, first).startswith(shared_text)
    assert rendered(hf_tokenizer, second).startswith(shared_text)


@PROPERTY_SETTINGS
@given(
    api=st.sampled_from(APIS),
    extra=st.integers(min_value=16, max_value=MAX_TOKENS),
    request_id=st.text(min_size=1, max_size=20),
    prefix=block_ids,
)
def test_deterministic_per_request_id(tiny_model_dir, synthesizers, api, extra, request_id, prefix):
    synthesizer = synthesizers()
    prompt_tokens = synthesizer.min_prompt_tokens(api) + extra
    body = synthesizer.synthesize(request_id, prompt_tokens, api, prefix)
    assert synthesizer.synthesize(request_id, prompt_tokens, api, prefix) == body
    other = synthesizer.synthesize(request_id + "-other", prompt_tokens, api, [])
    if not prefix:  # nothing shared: another request gets other text
        assert content_of(other) != content_of(body)


def test_fresh_instances_make_the_same_text(tiny_model_dir, synthesizers):
    """Determinism does not depend on a cache or on process state (hash seeds)."""
    fresh = PromptSynthesizer(tiny_model_dir)
    for api in APIS:
        for rid, n, prefix in [("a", 40, None), ("b", 1200, [5, 6]), ("c", 700, [2**62, -3])]:
            assert fresh.synthesize(rid, n, api, prefix) == synthesizers().synthesize(rid, n, api, prefix)


def test_a_row_from_a_traffic_log(synthesizers, hf_tokenizer):
    row = {"request_id": "mooncake-17", "api": "chat", "prompt_tokens": 1500, "prefix_block_ids": [0, 1, 2]}
    body = synthesizers().synthesize_row(row)
    assert len(server_token_ids(hf_tokenizer, body)) == 1500
    with pytest.raises(PromptSynthesisError, match="mooncake-17"):
        synthesizers().synthesize_row(row | {"prompt_tokens": None})


def test_too_short_is_a_clear_error_and_the_minimum_works(synthesizers, hf_tokenizer):
    synthesizer = synthesizers()
    for api in APIS:
        minimum = synthesizer.min_prompt_tokens(api)
        body = synthesizer.synthesize("short", minimum, api)
        assert len(server_token_ids(hf_tokenizer, body)) == minimum
        with pytest.raises(
            PromptTooShort, match=rf"request short: prompt_tokens={minimum - 1} is below the minimum of {minimum}"
        ):
            synthesizer.synthesize("short", minimum - 1, api)
    assert synthesizer.min_prompt_tokens("completions") == 2  # BOS + one word
    with pytest.raises(PromptSynthesisError, match="api must be chat or completions"):
        synthesizer.synthesize("x", 100, "embeddings")


def test_checked_mode_for_a_tokenizer_that_does_not_split_words(tmp_path, hf_tokenizer):
    """A byte-level tokenizer without the split regex: BPE runs over the whole text, so the count is
    verified by tokenizing each prompt (and stays exact)."""
    model = tmp_path / "no-split"
    shutil.copytree(hf_tokenizer.name_or_path, model)
    spec = json.loads((model / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    (model / "tokenizer.json").write_text(json.dumps(spec))
    synthesizer = PromptSynthesizer(model, block_size=64)
    assert not synthesizer.constructive
    for api in APIS:
        for n in [synthesizer.min_prompt_tokens(api), 100, 777]:
            body = synthesizer.synthesize(f"r{n}", n, api, [1, 2])
            assert synthesizer.count_prompt_tokens(body, api) == n


def test_a_chat_template_that_trims_content(tmp_path, hf_tokenizer):
    """Llama-3's own template trims message content; the first word has no space to lose."""
    model = tmp_path / "trimming"
    shutil.copytree(hf_tokenizer.name_or_path, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = config["chat_template"].replace("message['content']", "(message['content'] | trim)")
    assert "| trim" in config["chat_template"]
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    synthesizer = PromptSynthesizer(model, block_size=64)
    for n in [synthesizer.min_prompt_tokens("chat"), 100, 777]:
        assert synthesizer.count_prompt_tokens(synthesizer.synthesize(f"r{n}", n, "chat", [3]), "chat") == n


def test_not_a_tokenizer_directory(tmp_path):
    with pytest.raises(PromptSynthesisError, match=str(tmp_path)):
        PromptSynthesizer(tmp_path)


def test_forced_output_fields():
    assert forced_output_fields(37) == {"max_tokens": 37, "min_tokens": 37, "ignore_eos": True}
    with pytest.raises(PromptSynthesisError):
        forced_output_fields(0)
