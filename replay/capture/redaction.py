"""Redaction of captured traffic before it reaches disk: named rules, built in or the user's own,
applied to chat messages, completion prompts and answers, each match counted per rule.

A rule is a regular expression with a name (`RedactionRule`), and for the built-in ones that have a
check digit a validator, so that a 16-digit order number is not taken for a card, applied in this
order: `email`, `thai_national_id` (13 digits, the PDPA's own identifier, mod-11 check digit),
`card` (13 to 19 digits, spaces or dashes between groups, Luhn check), `iban` (ISO 13616 mod-97
check), `us_ssn` (NNN-NN-NNNN outside the never-issued areas), `phone` (international `+CC ...`
and the common national forms with separators). A rules file (`--redact RULES.yaml`) chooses which
built-in rules apply and adds its own:

    builtin: [email, phone, card, thai_national_id]   # default: every built-in rule
    rules:
      - {name: employee_id, pattern: "EMP-[0-9]{6}"}
      - {name: project, pattern: "(?i)project\\s+falcon"}

Replacement keeps the text's shape, so that a replay of the redacted text costs the server what
the original did: each character of a match is replaced by one of its own class (a letter by `x`,
or `X` where it was upper case; a digit by a random digit, drawn from the operating system's
random source, so nothing of the original can be recovered; anything else, `@ . - + ( )` and
spaces, kept as it is). The redacted text has exactly as many characters as the original, the
same separators and digit runs of the same lengths. Random digits, not `0`s, because byte-pair
tokenizers merge repeated characters: on the bundled tiny Llama tokenizer (4,096 tokens) the zero
mask drifts by 43 tokens over the tests' 14 samples (up to 9 on one), random digits by about 24 a
draw (up to 7: `5500-0000-0000-0004`, whose zeros merge). Tokenizers that split digits into fixed
groups (Llama 3's threes, Llama 2's ones) keep digit runs exact. Where the capture is given a
tokenizer (`count_tokens`), each match's replacement is drawn again (up to `TOKEN_TRIES` times,
every other draw keeping which digits repeat, all it tells of the original) until it has as many
tokens as the match, counted between the characters around it: the tests hold the result to two
tokens a match (over 10 draws of the 14 samples: 117 of 140 exact, 24 tokens of drift in all
against 238 without the tokenizer).
Production's own `prompt_tokens` stay in the captured row as the truth.

Messages are redacted inside their JSON: every string value (message `content`, a content part's
`text`, a tool call's `arguments`) but the structural fields (`role`, `type`, `name`, `id`,
`tool_call_id`), so the JSON stays valid and roles stay readable.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.config_files import read_yaml_mapping, validation_problems


class RedactionError(ShadowReplayError, ValueError):
    """A rules file that cannot be read or holds a rule that cannot be used (named with its field)."""


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def luhn_valid(text: str) -> bool:
    """The Luhn check of a card number's digits (separators ignored)."""
    digits = _digits(text)
    total = 0
    for position, ch in enumerate(reversed(digits)):
        value = int(ch)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return len(digits) >= 13 and total % 10 == 0


def iban_valid(text: str) -> bool:
    """ISO 13616: the country code and check digits moved to the end, letters as 10-35, mod 97 is 1."""
    compact = text.replace(" ", "").upper()
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return 15 <= len(compact) <= 34 and int(number) % 97 == 1


def thai_id_valid(text: str) -> bool:
    """The check digit of a Thai national id: (11 - sum of the first 12 digits x (13 - position)) mod 10."""
    digits = _digits(text)
    if len(digits) != 13:
        return False
    total = sum(int(d) * (13 - i) for i, d in enumerate(digits[:12]))
    return (11 - total % 11) % 10 == int(digits[12])


def us_ssn_valid(text: str) -> bool:
    """Not an area, group or serial the SSA never issues (000, 666, 900-999; 00; 0000)."""
    area, group, serial = text.split("-")
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


@dataclass(frozen=True)
class RedactionRule:
    """One named rule: what it matches, and (built-in rules with a check digit) what a match must pass."""

    name: str
    pattern: re.Pattern[str]
    valid: Callable[[str], bool] | None = None

    def matches(self, text: str) -> list[tuple[int, int]]:
        """The (start, end) spans of this rule's valid matches in `text`."""
        return [m.span() for m in self.pattern.finditer(text) if self.valid is None or self.valid(m.group())]


_NOT_IN_WORD = r"(?<![\w@.])"
_NOT_AFTER = r"(?![\w@])"
BUILTIN_RULES: dict[str, RedactionRule] = {
    rule.name: rule
    for rule in (
        RedactionRule("email", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")),
        RedactionRule(
            "thai_national_id", re.compile(r"(?<![\d-])\d(?:-?\d{4})(?:-?\d{5})(?:-?\d{2})-?\d(?![\d-])"), thai_id_valid
        ),
        RedactionRule(
            "card", re.compile(r"(?<![\d-])\d{4}(?:[ -]?\d{3,4}){2,3}(?:[ -]?\d{1,3})?(?![\d-])"), luhn_valid
        ),
        RedactionRule("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"), iban_valid),
        RedactionRule("us_ssn", re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])"), us_ssn_valid),
        RedactionRule(
            "phone",
            re.compile(
                _NOT_IN_WORD
                + r"(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"  # +66 81 234 5678
                + r"|\(0?\d{1,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"  # (02) 123 4567
                + r"|0\d{1,2}[ .-]\d{3,4}[ .-]\d{3,4})"  # 081-234-5678, 02 123 4567
                + _NOT_AFTER
            ),
        ),
    )
}
"""The built-in rules, in the order they are applied (an earlier rule's match is not matched again)."""

STRUCTURAL_KEYS = frozenset({"role", "type", "name", "id", "tool_call_id"})
"""Message fields left as they are: they name the structure, never what a user wrote."""


TOKEN_TRIES = 32
"""With a tokenizer: replacements drawn for one match, at most, for one of the match's token count."""


def mask(text: str, rng: random.Random, keep_repeats: bool = False) -> str:
    """`text` with each letter as `x` (`X` if upper case) and each digit as a random digit; other
    characters kept. `keep_repeats`: the digits through one random permutation of 0-9 (drawn for this
    text), so equal digits stay equal (`5500` as `7733`): a tokenizer that merges repeated digits
    merges them again."""
    digits = rng.sample("0123456789", 10) if keep_repeats else None
    return "".join(
        ("X" if ch.isupper() else "x")
        if ch.isalpha()
        else (digits[int(ch)] if digits is not None and ch in "0123456789" else str(rng.randrange(10)))
        if ch.isdigit()
        else ch
        for ch in text
    )


class _RuleEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    pattern: str = Field(min_length=1)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        if compiled.match(""):
            raise ValueError("matches the empty string (it would match everywhere)")
        return value


class RedactionRulesFile(BaseModel):
    """RULES.yaml: the built-in rules to apply (default all) and the user's own, in that order."""

    model_config = ConfigDict(extra="forbid")

    builtin: list[str] = Field(default_factory=lambda: list(BUILTIN_RULES))
    rules: list[_RuleEntry] = Field(default_factory=list)

    @field_validator("builtin")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in BUILTIN_RULES]
        if unknown:
            raise ValueError(f"unknown built-in rule(s) {unknown}; known: {', '.join(BUILTIN_RULES)}")
        return value


@dataclass
class Redactor:
    """Applies `rules` in order; `counts` holds the matches replaced per rule since it was made.
    `count_tokens` (a tokenizer's count of a text): replacements are drawn to keep each match's
    token count; `rng`: the random digits' source (default the operating system's)."""

    rules: Sequence[RedactionRule]
    count_tokens: Callable[[str], int] | None = None
    rng: random.Random = field(default_factory=random.SystemRandom)
    counts: Counter[str] = field(default_factory=Counter)

    @classmethod
    def builtin(cls, names: Iterable[str] | None = None, **options: Any) -> Redactor:
        """The built-in rules named (default: every one); `options` as the class takes them."""
        return cls([BUILTIN_RULES[name] for name in (names if names is not None else BUILTIN_RULES)], **options)

    @classmethod
    def from_file(cls, path: Path, **options: Any) -> Redactor:
        """The rules of a rules file (this module's docstring); RedactionError names the file and field."""
        raw = read_yaml_mapping(path, "redaction rules file", RedactionError, "builtin: [...], rules: [...]")
        try:
            parsed = RedactionRulesFile.model_validate(raw)
        except ValidationError as exc:
            raise RedactionError(f"{path}: {validation_problems(exc)}") from None
        names = [*parsed.builtin, *(entry.name for entry in parsed.rules)]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise RedactionError(f"{path}: rule names must be distinct; repeated: {', '.join(repeated)}")
        own = [RedactionRule(entry.name, re.compile(entry.pattern)) for entry in parsed.rules]
        return cls([*(BUILTIN_RULES[name] for name in parsed.builtin), *own], **options)

    @property
    def names(self) -> list[str]:
        return [rule.name for rule in self.rules]

    def text(self, text: str | None) -> str | None:
        """`text` with every match of every rule masked (this module's docstring), counted."""
        if not text:
            return text
        taken: list[tuple[int, int]] = []  # spans already replaced: a later rule does not match inside them
        for rule in self.rules:
            for start, end in rule.matches(text):
                if any(start < t_end and t_start < end for t_start, t_end in taken):
                    continue
                taken.append((start, end))
                self.counts[rule.name] += 1
        if not taken:
            return text
        pieces, last = [], 0
        for start, end in sorted(taken):
            pieces += [
                text[last:start],
                self._replacement(text[start:end], text[start - 1 : start], text[end : end + 1]),
            ]
            last = end
        pieces.append(text[last:])
        return "".join(pieces)

    def _replacement(self, match: str, before: str, after: str) -> str:
        """The match masked; with a tokenizer, drawn again until its token count is the match's (or
        the closest of TOKEN_TRIES draws), both counted between the characters `before` and `after` it
        (a space before a number is often one token with its first digit)."""
        replacement = mask(match, self.rng)
        if self.count_tokens is None or not any(ch.isdigit() for ch in match):
            return replacement  # only digits are drawn: a letters-only mask is what it is
        count_tokens = self.count_tokens

        def drift(candidate: str) -> int:
            return abs(count_tokens(before + candidate + after) - wanted)

        wanted = count_tokens(before + match + after)
        best, best_drift = replacement, drift(replacement)
        for turn in range(TOKEN_TRIES - 1):
            if best_drift == 0:
                break
            replacement = mask(match, self.rng, keep_repeats=turn % 2 == 0)
            if (found := drift(replacement)) < best_drift:
                best, best_drift = replacement, found
        return best

    def messages(self, messages_json: str | None) -> str | None:
        """A `messages` column value (chat messages as JSON) with every string redacted but the
        structural fields (STRUCTURAL_KEYS); text that is not JSON is redacted as text."""
        if not messages_json:
            return messages_json
        try:
            parsed = json.loads(messages_json)
        except ValueError:
            return self.text(messages_json)
        return json.dumps(self._walk(parsed), ensure_ascii=False, separators=(",", ":"))

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self._walk(item) for item in value]
        if isinstance(value, dict):
            return {key: item if key in STRUCTURAL_KEYS else self._walk(item) for key, item in value.items()}
        return value


def token_drift(original: str, redacted: str, count_tokens: Callable[[str], int]) -> int:
    """How many tokens the redacted text has more (or, negative, fewer) than the original."""
    return count_tokens(redacted) - count_tokens(original)
