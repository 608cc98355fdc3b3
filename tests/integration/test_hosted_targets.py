"""Hosted-API target files: the anthropic and azure_openai kinds, provider -> kind, rate limits and
retry budgets, and blue/green by environment (`${VAR}`), with errors that name file, field and
variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowreplay.replay.targets.config import TargetConfigError, load_target
from tests.support.paths import REPO


def write(tmp_path: Path, text: str, name: str = "t.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_anthropic_target_gets_default_options_and_refuses_what_it_cannot_do(tmp_path):
    target = load_target(
        write(tmp_path, "name: c\nkind: anthropic\nbase_url: https://api.anthropic.com\nmodel: claude-x\n")
    )
    assert target.anthropic.version == "2023-06-01" and target.anthropic.default_max_tokens == 4096
    assert not target.forces_output_length
    for extra, named in [
        ("api: completions\n", "chat only"),
        ("ignore_eos: true\n", "ignore_eos"),
        ("azure: {api_version: v}\n", "azure"),
    ]:
        path = write(tmp_path, "name: c\nkind: anthropic\nbase_url: https://api.anthropic.com\nmodel: m\n" + extra)
        with pytest.raises(TargetConfigError, match=named):
            load_target(path)
    with pytest.raises(TargetConfigError, match="without /v1"):
        load_target(write(tmp_path, "name: c\nkind: anthropic\nbase_url: https://api.anthropic.com/v1\nmodel: m\n"))


def test_azure_target_needs_its_section(tmp_path):
    with pytest.raises(TargetConfigError, match="azure"):
        load_target(write(tmp_path, "name: a\nkind: azure_openai\nbase_url: https://r.openai.azure.com\nmodel: m\n"))
    target = load_target(
        write(
            tmp_path,
            "name: a\nkind: azure_openai\nbase_url: https://r.openai.azure.com\nmodel: gpt-4o\n"
            "azure: {deployment: prod-4o, api_version: '2024-10-21'}\n",
        )
    )
    assert (target.azure.deployment, target.azure.api_version) == ("prod-4o", "2024-10-21")


def test_provider_sets_the_kind_when_none_is_given(tmp_path):
    groq = load_target(
        write(tmp_path, "name: g\nprovider: groq\nbase_url: https://api.groq.com/openai/v1\nmodel: llama\n")
    )
    assert (groq.kind, groq.provider) == ("openai", "groq")
    assert (
        load_target(
            write(tmp_path, "name: a\nprovider: anthropic\nbase_url: https://api.anthropic.com\nmodel: m\n")
        ).kind
        == "anthropic"
    )
    with pytest.raises(TargetConfigError, match="provider 'acme'"):
        load_target(write(tmp_path, "name: x\nprovider: acme\nbase_url: https://acme.example/v1\nmodel: m\n"))


def test_rate_limits_and_retry_budget_validate(tmp_path):
    target = load_target(
        write(
            tmp_path,
            "name: o\nkind: openai\nbase_url: https://api.openai.com/v1\nmodel: m\n"
            "rate_limits: {rpm: 500, tpm: 200000}\n"
            "retry: {max_attempts: 4, budget: {ratio: 0.2, min_per_minute: 5}}\n",
        )
    )
    assert (target.rate_limits.rpm, target.rate_limits.tpm, target.rate_limits.burst_s) == (500, 200000, 1.0)
    assert (target.retry.budget.ratio, target.retry.budget.min_per_minute) == (0.2, 5)
    with pytest.raises(TargetConfigError, match="rate_limits"):
        load_target(write(tmp_path, "name: o\nkind: openai\nbase_url: https://x/v1\nmodel: m\nrate_limits: {}\n"))
    with pytest.raises(TargetConfigError, match="rate_limits.rpm"):
        load_target(
            write(tmp_path, "name: o\nkind: openai\nbase_url: https://x/v1\nmodel: m\nrate_limits: {rpm: -1}\n")
        )


BLUE_GREEN = """\
name: candidate
kind: ${MODEL_PROVIDER}
model: ${MODEL_ID}
base_url: ${INFERENCE_ENDPOINT}
api_key_env: ${INFERENCE_API_KEY_VAR:-INFERENCE_API_KEY}
"""


def test_blue_green_fields_come_from_the_environment_and_are_recorded(tmp_path, monkeypatch):
    path = write(tmp_path, BLUE_GREEN)
    monkeypatch.setenv("MODEL_PROVIDER", "anthropic")
    monkeypatch.setenv("MODEL_ID", "claude-green")
    monkeypatch.setenv("INFERENCE_ENDPOINT", "https://api.anthropic.com")
    monkeypatch.delenv("INFERENCE_API_KEY_VAR", raising=False)
    monkeypatch.setenv("INFERENCE_API_KEY", "sk-ant-canary-bg")
    green = load_target(path)
    assert (green.kind, green.model, green.base_url, green.api_key_env) == (
        "anthropic",
        "claude-green",
        "https://api.anthropic.com",
        "INFERENCE_API_KEY",
    )
    public = green.public_dict()
    assert public["from_env"] == {
        "kind": "MODEL_PROVIDER",
        "model": "MODEL_ID",
        "base_url": "INFERENCE_ENDPOINT",
        "api_key_env": "INFERENCE_API_KEY_VAR",
    }
    assert "sk-ant-canary-bg" not in repr(public)
    # The swap is a change of environment only.
    monkeypatch.setenv("MODEL_PROVIDER", "openai")
    monkeypatch.setenv("MODEL_ID", "gpt-blue")
    monkeypatch.setenv("INFERENCE_ENDPOINT", "https://api.openai.com/v1")
    monkeypatch.setenv("INFERENCE_API_KEY_VAR", "OPENAI_API_KEY")
    blue = load_target(path)
    assert (blue.kind, blue.model, blue.base_url, blue.api_key_env) == (
        "openai",
        "gpt-blue",
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
    )
    # model_copy (the runner's base_url update) keeps the record of where values came from.
    assert (
        blue.model_copy(update={"base_url": "http://127.0.0.1:1/v1"}).public_dict()["from_env"]["model"] == "MODEL_ID"
    )


def test_a_missing_variable_is_an_error_naming_it(tmp_path, monkeypatch):
    path = write(tmp_path, BLUE_GREEN)
    monkeypatch.setenv("MODEL_PROVIDER", "openai")
    monkeypatch.delenv("MODEL_ID", raising=False)
    monkeypatch.setenv("INFERENCE_ENDPOINT", "https://api.openai.com/v1")
    with pytest.raises(TargetConfigError) as err:
        load_target(path)
    assert str(path) in str(err.value) and "model" in str(err.value) and "MODEL_ID" in str(err.value)
    monkeypatch.setenv("MODEL_ID", "")  # empty counts as unset
    with pytest.raises(TargetConfigError, match="MODEL_ID"):
        load_target(path)


def test_interpolation_is_refused_outside_the_identity_fields(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET", "sk-should-never-be-read")
    for text, field in [
        ("extra_body: {token: '${SECRET}'}\n", "extra_body.token"),
        ("vllm: {model: m, args: ['--key', '${SECRET}']}\n", "vllm.args[1]"),
    ]:
        path = write(
            tmp_path,
            "name: x\nkind: vllm\nmodel: m\n" + text
            if "vllm:" in text
            else "name: x\nkind: openai\nbase_url: http://127.0.0.1:1/v1\nmodel: m\n" + text,
        )
        with pytest.raises(TargetConfigError) as err:
            load_target(path)
        assert field in str(err.value) and "sk-should-never-be-read" not in str(err.value)
    with pytest.raises(TargetConfigError, match="malformed"):
        load_target(write(tmp_path, "name: x\nkind: openai\nbase_url: http://127.0.0.1:1/v1\nmodel: ${MODEL-ID}\n"))


def test_azure_deployment_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AZURE_DEPLOYMENT", "green-4o")
    path = write(
        tmp_path,
        "name: az\nkind: azure_openai\nbase_url: https://r.openai.azure.com\nmodel: gpt-4o\n"
        "azure: {deployment: '${AZURE_DEPLOYMENT}', api_version: '${AZURE_API_VERSION:-2024-10-21}'}\n",
    )
    target = load_target(path)
    assert (target.azure.deployment, target.azure.api_version) == ("green-4o", "2024-10-21")
    assert target.public_dict()["from_env"] == {
        "azure.deployment": "AZURE_DEPLOYMENT",
        "azure.api_version": "AZURE_API_VERSION",
    }


def test_bundled_example_targets_load(monkeypatch):
    monkeypatch.setenv("MODEL_PROVIDER", "anthropic")
    monkeypatch.setenv("MODEL_ID", "claude-sonnet-4-5")
    monkeypatch.setenv("INFERENCE_ENDPOINT", "https://api.anthropic.com")
    for name in (
        "anthropic.example.yaml",
        "azure-openai.example.yaml",
        "groq.example.yaml",
        "candidate-from-env.example.yaml",
    ):
        target = load_target(REPO / "configs" / "targets" / name)
        assert target.api_key_env and target.base_url.startswith("https://")


def test_an_unreadable_key_stops_a_replay_before_any_server_or_worker_starts(tmp_path, monkeypatch, capsys):
    import ray

    from shadowreplay.cli import main
    from tests.support.traffic_logs import log_row, write_log

    monkeypatch.delenv("SHADOWREPLAY_TEST_UNSET_KEY", raising=False)
    target = write(
        tmp_path,
        "name: c\nkind: anthropic\nbase_url: http://127.0.0.1:9\nmodel: claude-x\n"
        "api_key_env: SHADOWREPLAY_TEST_UNSET_KEY\n",
    )
    log = write_log(tmp_path / "log.parquet", [log_row(0, 0.0)])
    was_running = ray.is_initialized()
    code = main(["replay", str(log), "--target", str(target), "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "SHADOWREPLAY_TEST_UNSET_KEY, which is not set" in err and str(target) in err
    assert ray.is_initialized() == was_running and not (tmp_path / "run" / "results").exists()


def test_a_worker_failure_shows_a_target_error_but_no_other_message():
    import ray

    from shadowreplay.replay.run.runner import worker_failure

    config_error = ray.exceptions.RayTaskError(
        "run", "traceback", TargetConfigError("t.yaml: api_key_env names K, which is not set")
    )
    assert worker_failure(config_error).endswith("t.yaml: api_key_env names K, which is not set")
    other = ray.exceptions.RayTaskError("run", "traceback", RuntimeError("POST http://h/v1 Authorization: Bearer sk-x"))
    assert "sk-x" not in worker_failure(other) and worker_failure(other).startswith("RayTaskError")


def test_metrics_url_is_a_running_servers_page_and_not_for_kind_vllm(tmp_path):
    base = "name: s\nkind: openai\nbase_url: http://127.0.0.1:8000/v1\nmodel: m\n"
    target = load_target(write(tmp_path, base + "metrics_url: http://127.0.0.1:8000/metrics/\n"))
    assert target.metrics_url == "http://127.0.0.1:8000/metrics"
    with pytest.raises(TargetConfigError, match="metrics_url"):
        load_target(write(tmp_path, base + "metrics_url: 127.0.0.1:8000/metrics\n"))
    with pytest.raises(TargetConfigError, match="metrics_url"):
        load_target(write(tmp_path, "name: v\nkind: vllm\nmodel: m\nmetrics_url: http://h/metrics\nvllm: {model: m}\n"))
