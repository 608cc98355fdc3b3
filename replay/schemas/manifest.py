"""RUN_DIR/manifest.json: what was run, where, with which versions, and what came of it.

Configuration is written through TargetConfig.public_dict(), which carries the *names* of key
variables and key files, never a key. `scrub` removes any known secret value from free text
(server logs' tails, error strings) before it can reach the manifest.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
from pathlib import Path

from shadowreplay import __version__

PACKAGES = ("ray", "aiohttp", "pyarrow", "polars", "pydantic", "tokenizers", "transformers")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"shadowreplay": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def scrub(value, secrets: list[str]):
    """A copy of `value` (nested dicts/lists/strings) with every secret replaced by '***'."""
    secrets = [s for s in secrets if s]
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "***")
        return value
    if isinstance(value, dict):
        return {k: scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, secrets) for v in value]
    return value


def write_manifest(run_dir: Path, manifest: dict, secrets: list[str]) -> Path:
    """Write manifest.json with versions and the command line added, secrets scrubbed."""
    manifest = {
        "schema_version": 1,
        "command": sys.argv,
        "versions": package_versions(),
        "platform": platform.platform(),
        **manifest,
    }
    path = Path(run_dir) / "manifest.json"
    path.write_text(json.dumps(scrub(manifest, secrets), indent=2, default=str) + "\n")
    return path
