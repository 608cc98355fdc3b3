"""Reading the project's YAML configuration files (targets, prices, later gates and cost models):
one loader, so every file gives the same one-line errors naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from shadowreplay.errors import ShadowReplayError


def read_yaml_mapping(path: Path, what: str, error: type[ShadowReplayError], expected: str) -> dict[str, Any]:
    """The YAML mapping in `path` (a `what`, e.g. "target file"); `error` names the file when it
    cannot be read, is not YAML, or is not a mapping (`expected` says what it should hold)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: a {what} must be a mapping ({expected})")
    return raw


def validation_problems(exc: ValidationError) -> str:
    """A pydantic validation error as one line: `field.path: message; ...` (`(file)` for the root)."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(file)'}: {err['msg']}" for err in exc.errors())
