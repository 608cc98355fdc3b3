"""Target files: validation errors name the file and field; paths resolve against the file."""

from pathlib import Path

import pytest

from shadowreplay.replay.targets.config import TargetConfigError, load_target, load_targets
from tests.support.paths import REPO


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_bundled_demo_target_loads_with_paths_resolved_against_the_file():
    target = load_target(REPO / "configs/targets/tiny-vllm-cpu.yaml")
    assert target.kind == "vllm"
    assert target.tokenizer == str(REPO / ".cache/tiny-llama")
    assert target.vllm.model == str(REPO / ".cache/tiny-llama")
    assert target.forces_output_length


def test_openai_target_needs_base_url(tmp_path):
    path = write(tmp_path, "t.yaml", "name: a\nkind: openai\nmodel: m\n")
    with pytest.raises(TargetConfigError) as err:
        load_target(path)
    assert str(path) in str(err.value) and "base_url" in str(err.value)


def test_unknown_field_and_bad_timeout_are_named(tmp_path):
    path = write(
        tmp_path,
        "t.yaml",
        "name: a\nkind: openai\nmodel: m\nbase_url: http://127.0.0.1:1/v1\ntimeouts: {connect_s: -1}\nflavour: x\n",
    )
    with pytest.raises(TargetConfigError) as err:
        load_target(path)
    message = str(err.value)
    assert "timeouts.connect_s" in message and "flavour" in message


def test_key_comes_from_the_named_variable_and_never_appears_in_the_public_dict(tmp_path, monkeypatch):
    path = write(
        tmp_path,
        "t.yaml",
        "name: a\nkind: openai\nmodel: m\nbase_url: http://127.0.0.1:1/v1\napi_key_env: SR_TEST_KEY\n",
    )
    monkeypatch.setenv("SR_TEST_KEY", "sk-canary-123")
    target = load_target(path)
    assert target.api_key() == "sk-canary-123"
    assert "sk-canary-123" not in repr(target.public_dict())
    monkeypatch.delenv("SR_TEST_KEY")
    with pytest.raises(TargetConfigError, match="SR_TEST_KEY"):
        target.api_key()


def test_hub_model_ids_are_not_mistaken_for_paths(tmp_path):
    path = write(tmp_path, "t.yaml", "name: a\nkind: vllm\nmodel: m\nvllm: {model: google/gemma-3-1b-it}\n")
    assert load_target(path).vllm.model == "google/gemma-3-1b-it"


def test_duplicate_target_names_are_refused(tmp_path):
    a = write(tmp_path, "a.yaml", "name: same\nkind: openai\nmodel: m\nbase_url: http://127.0.0.1:1/v1\n")
    b = write(tmp_path, "b.yaml", "name: same\nkind: openai\nmodel: m\nbase_url: http://127.0.0.1:2/v1\n")
    with pytest.raises(TargetConfigError, match="same"):
        load_targets([a, b])


def test_not_yaml_and_missing_file(tmp_path):
    bad = write(tmp_path, "t.yaml", "name: [unclosed\n")
    with pytest.raises(TargetConfigError, match="not valid YAML"):
        load_target(bad)
    with pytest.raises(TargetConfigError, match="cannot read"):
        load_target(tmp_path / "missing.yaml")
