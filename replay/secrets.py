"""Secrets, in one place: reading API keys, and the one scrubber that keeps them out of everything
the tool writes (result rows, server logs' tails, manifests, reports, console lines).

A key is read at the moment of use from the environment variable or the file a target names, and
is never stored in a config object. Whatever leaves a process goes through a `Scrubber` first:
free text (`text`), error texts cut to a length (`cut`: scrubbed *before* it is cut, so a key cut
in two can never survive as a fragment), nested values (`value`), command lines (`argv`: values of
`--api-key` and similar options) and environments (`env`: variables whose names say KEY, TOKEN,
SECRET, PASSWORD or CREDENTIAL). Every redaction reads `REDACTED`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from shadowreplay.errors import ShadowReplayError

REDACTED = "[redacted]"
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
SECRET_OPTIONS = frozenset({"--api-key"})


class KeyReadError(ShadowReplayError):
    """A key that a target names cannot be read (variable not set, key file unreadable)."""


def read_key(source: str, env_name: str | None = None, key_file: str | Path | None = None) -> str | None:
    """The key from the variable `env_name`, else the file `key_file` (stripped), else None.
    `source` names what asked for it (a target file) in the error."""
    if env_name:
        key = os.environ.get(env_name)
        if key is None:
            raise KeyReadError(f"{source}: api_key_env names {env_name}, which is not set")
        return key
    if key_file:
        try:
            return Path(key_file).read_text().strip()
        except OSError as exc:
            raise KeyReadError(f"{source}: api_key_file {key_file}: {exc.strerror}") from None
    return None


class Scrubber:
    """Replaces every known secret in what it is given. Cheap when there is none."""

    __slots__ = ("secrets",)

    def __init__(self, secrets: Iterable[str | None] = ()):
        # Longest first: a key that contains another is replaced whole.
        unique = {s for s in secrets if s}
        self.secrets: tuple[str, ...] = tuple(sorted(unique, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def text(self, text: str) -> str:
        """`text` with every secret replaced by REDACTED."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def cut(self, text: str, limit: int) -> str:
        """`text` scrubbed, then cut to at most `limit` characters ("..." marks a cut)."""
        text = self.text(text)
        if len(text) > limit:
            text = text[: limit - 3] + "..."
        return text

    def value(self, value: Any) -> Any:
        """A copy of `value` (nested dicts, lists, tuples, strings) with every secret replaced;
        mapping keys are scrubbed too."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value

    def argv(self, argv: Iterable[str]) -> list[str]:
        """A command line with the values of secret options (`--api-key X`, `--api-key=X`) and any
        known secret replaced."""
        redacted: list[str] = []
        hide_next = False
        for arg in argv:
            if hide_next:
                redacted.append(REDACTED)
                hide_next = False
            elif arg in SECRET_OPTIONS:
                redacted.append(arg)
                hide_next = True
            elif arg.split("=", 1)[0] in SECRET_OPTIONS and "=" in arg:
                redacted.append(arg.split("=", 1)[0] + "=" + REDACTED)
            else:
                redacted.append(self.text(arg))
        return redacted

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """An environment with the values of secret-named variables, and any known secret, replaced."""
        return {name: REDACTED if SECRET_NAME.search(name) else self.text(value) for name, value in env.items()}
