"""Secrets, in one place: reading API keys, and the one scrubber that keeps them out of everything
the tool writes (result rows, server logs' tails, manifests, reports, console lines).

A key is read at the moment of use from the environment variable or the file a target names, and
is never stored in a config object. A key holding a control character (a newline inside a key
file, say) is refused when it is read: it could go into no header, so every request would fail.
Whatever leaves a process goes through a `Scrubber` first: free text (`text`), error texts cut to
a length (`cut`: scrubbed *before* it is cut, so a key cut in two can never survive as a
fragment), the head of a text cut by someone else (`head`: a body read up to a limit, whose end
may hold the first part of a key), nested values (`value`), command lines (`argv`: values of
`--api-key` and similar options) and environments (`env`: variables whose names say KEY, TOKEN,
SECRET, PASSWORD or CREDENTIAL). A secret is also found as Python's `repr` and JSON write it (a
key with a quote or a backslash, echoed inside a quoted event or header). Every redaction reads
`REDACTED`.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from shadowreplay.errors import ShadowReplayError

REDACTED = "[redacted]"
CONTROL_NAMES = {"\n": "newline", "\r": "carriage return", "\t": "tab"}
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
SECRET_OPTIONS = frozenset({"--api-key"})


class KeyReadError(ShadowReplayError):
    """A key that a target names cannot be read (variable not set, key file unreadable) or cannot
    be sent (it holds a control character)."""


def read_key(source: str, env_name: str | None = None, key_file: str | Path | None = None) -> str | None:
    """The key from the variable `env_name`, else the file `key_file` (stripped), else None.
    `source` names what asked for it (a target file) in the error; a key holding a control
    character is refused, the error saying which and where (never the key)."""
    if env_name:
        key = os.environ.get(env_name)
        if key is None:
            raise KeyReadError(f"{source}: api_key_env names {env_name}, which is not set")
        _refuse_control_characters(key, f"{source}: api_key_env {env_name}")
        return key
    if key_file:
        try:
            with open(key_file, encoding="utf-8", newline="") as file:  # newline="": a CR stays a CR
                key = file.read().strip()
        except OSError as exc:
            raise KeyReadError(f"{source}: api_key_file {key_file}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise KeyReadError(f"{source}: api_key_file {key_file}: not UTF-8 text (byte {exc.start + 1})") from None
        _refuse_control_characters(key, f"{source}: api_key_file {key_file}")
        return key
    return None


def _refuse_control_characters(key: str, where: str) -> None:
    """KeyReadError naming `where` and the first control character of `key` (1-based position)."""
    for position, char in enumerate(key, start=1):
        if unicodedata.category(char) == "Cc":
            name = CONTROL_NAMES.get(char, f"U+{ord(char):04X}")
            raise KeyReadError(f"{where}: the key contains a control character ({name}) at position {position}")


def _written_forms(secret: str) -> set[str]:
    """`secret` as it is, and as Python's repr and JSON (ASCII or not) write it inside quotes."""
    return {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}


def _begun_length(text: str, secret: str) -> int:
    """The length of the longest end of `text` that is a beginning of `secret` (0: none)."""
    for length in range(min(len(secret) - 1, len(text)), 0, -1):
        if text.endswith(secret[:length]):
            return length
    return 0


class Scrubber:
    """Replaces every known secret in what it is given. Cheap when there is none."""

    __slots__ = ("secrets",)

    def __init__(self, secrets: Iterable[str | None] = ()):
        # Longest first: a key that contains another is replaced whole.
        unique = {form for s in secrets if s for form in _written_forms(s)}
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

    def head(self, text: str) -> str:
        """`text`, the head of a longer text cut by someone else (a body read up to a limit),
        scrubbed; its end, where it could be the first part of a secret, is redacted too."""
        text = self.text(text)
        begun = max((_begun_length(text, secret) for secret in self.secrets), default=0)
        return text[:-begun] + REDACTED if begun else text

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
