"""How a shadow comparison scores answers: a scorer (`ScorerSpec`, named by a gate) compares each output with
the traffic log's `reference`, and the output checks (refusals, JSON) feed the paired measures
(analysis/shadow/paired_requests.py).

Conventions, stated once:
- `score` gives one Boolean per row, named `correct`: null where the reference is null (the request is not
  scored), False where the reference is given but the output is null (a failed request: the user got no
  right answer), else the scorer's verdict. Each scorer's definition is in its function's docstring.
- The output checks give null where the output is null (no answer to judge), except `asks_for_json`, which
  reads the request and is never null.
- Vectorised polars expressions where the definition allows it (exact, normalized, contains, refusals, the
  fence and JSON-shape checks); per-row Python where it must be (a per-row regex, lookarounds, JSON parsing
  and schema validation).
- A fence: an output that is wholly one Markdown code block (```` ``` ```` or ```` ```json ````, any info
  string) is read as its contents (`FENCE_PATTERN`); the JSON checks apply to that, trimmed.
- Errors in the references (a number that is not a number, a schema that is not a schema, a pattern that
  does not compile) raise `ScorerError` naming the row: its 0-based position in the Series scored.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Literal

import polars as pl
from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]
from jsonschema.validators import Draft202012Validator, validator_for  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from referencing.exceptions import Unresolvable

from shadowreplay.errors import ShadowReplayError

ScorerKind = Literal["exact", "normalized", "contains", "regex", "numeric", "json_schema", "choice", "judge"]
"""`judge`: an LLM's verdict on each answer, read from the judge's own run (analysis/shadow/judge_verdicts.py), not
computed here."""

DEFAULT_REFUSAL_PHRASES: tuple[str, ...] = (
    "I'm sorry, but I can't",
    "I'm sorry, but I cannot",
    "I cannot help with",
    "I can't help with",
    "I can't assist with",
    "I cannot assist with",
    "I can't provide",
    "I cannot provide",
    "As an AI",
    "I am unable to",
    "I'm unable to",
    "I'm not able to",
    "I am not able to",
    "I won't be able to",
    "I must decline",
)
"""Common English refusal openings (refusals): matched anywhere, case-insensitively, as whole words."""

FENCE_PATTERN = r"(?s)^\s*```[A-Za-z0-9_+.-]*[ \t]*\n?(.*?)\s*```\s*$"
"""An output that is wholly one fenced code block; group 1 is its contents (polars regex syntax)."""

JSON_RESPONSE_FORMATS = ("json_object", "json_schema")
"""The request's `response_format.type` values that ask for JSON (asks_for_json)."""

_OPTION_KINDS: dict[str, tuple[str, ...]] = {
    "tolerance": ("numeric",),
    "rel_tolerance": ("numeric",),
    "pattern": ("regex",),
    "case_sensitive": ("contains", "regex"),
}
"""Which kinds each option of ScorerSpec belongs to."""

_REFERENCE_PLACEHOLDER = "{reference}"
_NUMBER = re.compile(
    r"(?<![\w.])[-+\u2212]?(?:(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
)
"""A number in text: signed (+, - or the minus sign U+2212), integer or decimal, thousands commas allowed
(1,234,567.5), an optional exponent (1.5e-3); not glued to a preceding letter, digit, `_` or `.`."""
_ANSWER_LETTER = re.compile(
    r"(?i:answer)(?:\s+is\b|\s*:)[\s*_:]*(?i:(?:option|choice)\s+)?"
    r"(?:\(([A-Za-z])\)|([A-Z])(?![A-Za-z0-9'’])|([a-z])(?=\s*(?:$|[.,;:!?)\]*_])))"
)
"""`answer is (X)`, `answer is X`, `answer: X`, `**Answer:** X`, `answer is option X` (the keyword in any case);
a bare lower-case letter only before punctuation or the end (so that `the answer is a bit` names no letter)."""
_BARE_LETTER = re.compile(r"\s*\(?([A-Za-z])[).]?\s*")
_LINE_LETTER = re.compile(r"^[ \t]*\(?([A-J])[).]", re.MULTILINE)
_REFERENCE_LETTER = re.compile(r"\s*\(?([A-Za-z])[).]?\s*")
_TOLERANCE_SLACK = 4.0 * sys.float_info.epsilon
_RUST_META = set("\\.+*?()|[]{}^$#&-~")
_MESSAGE_CHARS = 200


class ScorerError(ShadowReplayError, ValueError):
    """A scorer that cannot be built, or a reference it cannot use (the message names the row and the value)."""


class ScorerSpec(BaseModel):
    """How answers are scored: a `kind` (module functions `_score_<kind>`) and the options that kind takes.

    `tolerance`, `rel_tolerance` (numeric): |out - ref| <= tolerance + rel_tolerance * |ref|. `pattern` (regex):
    a fixed pattern in which `{reference}` stands for the re.escape()d reference (the only placeholder: other
    braces are regex syntax); None: the reference itself is the pattern. `case_sensitive` (contains, regex).
    An option given to a kind it does not belong to is an error, even at its default value.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ScorerKind
    tolerance: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    rel_tolerance: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    pattern: str | None = None
    case_sensitive: bool = False

    @model_validator(mode="after")
    def _options_fit_kind(self) -> ScorerSpec:
        foreign = sorted(
            name for name in self.model_fields_set & _OPTION_KINDS.keys() if self.kind not in _OPTION_KINDS[name]
        )
        if foreign:
            belongs = "; ".join(f"{name} goes with {' or '.join(_OPTION_KINDS[name])}" for name in foreign)
            raise ValueError(f"scorer {self.kind!r} takes no {', '.join(foreign)} ({belongs})")
        if self.pattern is not None:
            try:
                re.compile(self.pattern.replace(_REFERENCE_PLACEHOLDER, "x"), _regex_flags(self.case_sensitive))
            except re.error as err:
                raise ValueError(f"scorer 'regex': pattern {self.pattern!r} does not compile: {err}") from err
        return self

    @classmethod
    def parse(cls, value: str | Mapping[str, Any]) -> ScorerSpec:
        """A scorer as a gates file writes it: a bare kind (`"normalized"`) or a mapping (`{"kind": "numeric",
        "tolerance": 0.01}`). ScorerError (a ValueError) with every problem on one line for anything else."""
        if isinstance(value, str):
            fields: dict[str, Any] = {"kind": value.strip()}
        elif isinstance(value, Mapping):
            fields = dict(value)
        else:
            raise ScorerError(f"scorer {value!r}: expected a kind name or a mapping with `kind`")
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise ScorerError(f"scorer {value!r}: {_problems(exc)}") from None

    @property
    def label(self) -> str:
        """A short human name: `normalized`, `numeric (tolerance 0.01)`, `regex (pattern /\\d+/, case-sensitive)`."""
        parts: list[str] = []
        if self.kind == "numeric":
            if self.tolerance:
                parts.append(f"tolerance {self.tolerance:g}")
            if self.rel_tolerance:
                parts.append(f"rel_tolerance {self.rel_tolerance:g}")
        if self.kind == "regex" and self.pattern is not None:
            parts.append(f"pattern /{self.pattern}/")
        if self.kind in ("contains", "regex") and self.case_sensitive:
            parts.append("case-sensitive")
        return f"{self.kind} ({', '.join(parts)})" if parts else self.kind


def _problems(exc: ValidationError) -> str:
    """A pydantic error as one line: `field: message; ...` (no field for the model's own checks)."""
    problems = []
    for err in exc.errors():
        message = err["msg"].removeprefix("Value error, ")
        where = ".".join(str(part) for part in err["loc"])
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def _regex_flags(case_sensitive: bool) -> int:
    return re.DOTALL | (0 if case_sensitive else re.IGNORECASE)


def _shown(value: str) -> str:
    """A value for an error message: repr, cut to _MESSAGE_CHARS characters."""
    return repr(value) if len(value) <= _MESSAGE_CHARS else repr(value[:_MESSAGE_CHARS]) + "..."


# ---- scoring ----------------------------------------------------------------------------------


def score(spec: ScorerSpec, outputs: pl.Series, references: pl.Series) -> pl.Series:
    """Per row: is the output right? (Boolean, named `correct`): null where the reference is null (not scored);
    False where the reference is given and the output is null (a failed request); else the verdict of
    spec.kind (_score_exact, _score_normalized, _score_contains, _score_regex, _score_numeric,
    _score_json_schema, _score_choice). ScorerError, naming the row, for a reference the scorer cannot use
    (checked on every row with a reference, answered or not)."""
    if spec.kind == "judge":
        raise ScorerError("a judge's verdicts are read from its run (analysis/shadow/judge_verdicts.py), not scored")
    if outputs.len() != references.len():
        raise ValueError(f"outputs ({outputs.len()}) and references ({references.len()}) differ in length")
    out, ref = outputs.cast(pl.String), references.cast(pl.String)
    verdict = _SCORERS[spec.kind](spec, out, ref).cast(pl.Boolean)
    frame = pl.DataFrame({"o": out, "r": ref, "v": verdict})
    return frame.select(
        pl.when(pl.col("r").is_null())
        .then(pl.lit(None, dtype=pl.Boolean))
        .when(pl.col("o").is_null())
        .then(False)
        .otherwise(pl.col("v"))
        .alias("correct")
    ).to_series()


def _normalized(text: pl.Expr, case_sensitive: bool = False) -> pl.Expr:
    """Trimmed, every run of whitespace one space, and (unless case_sensitive) lower-cased by polars
    `str.to_lowercase` (Unicode lower-casing, not full str.casefold: `ß` stays `ß`, not `ss`)."""
    text = text.str.strip_chars().str.replace_all(r"\s+", " ")
    return text if case_sensitive else text.str.to_lowercase()


def _vectorised(
    expression: Callable[[pl.Expr, pl.Expr], pl.Expr], outputs: pl.Series, references: pl.Series
) -> pl.Series:
    return pl.DataFrame({"o": outputs, "r": references}).select(expression(pl.col("o"), pl.col("r"))).to_series()


def _score_exact(spec: ScorerSpec, outputs: pl.Series, references: pl.Series) -> pl.Series:
    """exact: output == reference (byte for byte: no trimming, case counts)."""
    return _vectorised(lambda o, r: o == r, outputs, references)


def _score_normalized(spec: ScorerSpec, outputs: pl.Series, references: pl.Series) -> pl.Series:
    """normalized: both trimmed, runs of whitespace collapsed to one space, lower-cased (_normalized), then equal."""
    return _vectorised(lambda o, r: _normalized(o) == _normalized(r), outputs, references)


def _score_contains(spec: ScorerSpec, outputs: pl.Series, references: pl.Series) -> pl.Series:
    """contains: the normalized reference occurs (as a literal substring) in the normalized output; case-insensitive
    unless case_sensitive (then only trimming and whitespace are normalized). An empty reference is in every output."""
    case = spec.case_sensitive
    return _vectorised(
        lambda o, r: _normalized(o, case).str.contains(_normalized(r, case), literal=True), outputs, references
    )


def _score_regex(spec: ScorerSpec, outputs: pl.Series, references: pl.Series) -> pl.Series:
    """regex: re.search(pattern, output) finds a match, flags re.DOTALL and (unless case_sensitive) re.IGNORECASE.
    pattern: spec.pattern with `{reference}` replaced by re.escape(reference), or the reference itself when
    spec.pattern is None. A pattern that does not compile: ScorerError naming the row and the pattern."""
    flags = _regex_flags(spec.case_sensitive)
    compiled: dict[str, re.Pattern[str]] = {}
    verdicts: list[bool | None] = []
    for row, (output, reference) in enumerate(zip(outputs.to_list(), references.to_list(), strict=True)):
        if reference is None:
            verdicts.append(None)
            continue
        if spec.pattern is None:
            pattern = reference
        else:
            pattern = spec.pattern.replace(_REFERENCE_PLACEHOLDER, re.escape(reference))
        if pattern not in compiled:
            try:
                compiled[pattern] = re.compile(pattern, flags)
            except re.error as err:
                raise ScorerError(f"row {row}: regex pattern {_shown(pattern)} does not compile: {err}") from None
        verdicts.append(None if output is None else compiled[pattern].search(output) is not None)
    return pl.Series("correct", verdicts, dtype=pl.Boolean)


def _number(text: str) -> float:
    return float(text.replace(",", "").replace("\u2212", "-"))


def last_number(text: str) -> float | None:
    """The last number written in `text` (_NUMBER: signed ints, decimals, scientific, thousands commas), or None."""
    found = _NUMBER.findall(text)
    return _number(found[-1]) if found else None


def _within(output: float, reference: float, tolerance: float, rel_tolerance: float) -> bool:
    """|output - reference| <= tolerance + rel_tolerance * |reference|, with a few ulps of slack so that a
    difference exactly at the tolerance as written in decimal (1.01 vs 1.0 within 0.01) passes."""
    allowed = tolerance + rel_tolerance * abs(reference)
    slack = _TOLERANCE_SLACK * (max(abs(output), abs(reference)) + allowed)
    return abs(output - reference) <= allowed + slack


def _score_numeric(spec: ScorerSpec, outputs: pl.Series, references: pl.Series) -> pl.Series:
    """numeric: the reference is a number (trimmed; a whole _NUMBER: thousands commas allowed and removed; not a
    number: ScorerError naming the row); the output's LAST number (last_number) is within tolerance of it,
    |out - ref| <= tolerance + rel_tolerance * |ref| (_within). No number in the output: False."""
    verdicts: list[bool | None] = []
    for row, (output, reference) in enumerate(zip(outputs.to_list(), references.to_list(), strict=True)):
        if reference is None:
            verdicts.append(None)
            continue
        if not _NUMBER.fullmatch(reference.strip()):
            raise ScorerError(f"row {row}: the numeric scorer's reference {_shown(reference)} is not a number")
        expected = _number(reference.strip())
        if output is None:
            verdicts.append(None)
            continue
        found = last_number(output)
        verdicts.append(
            found is not None and math.isfinite(found) and _within(found, expected, spec.tolerance, spec.rel_tolerance)
        )
    return pl.Series("correct", verdicts, dtype=pl.Boolean)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parsed_json(text: str) -> tuple[bool, Any]:
    """(True, value) when `text` is strict JSON (no NaN or Infinity), else (False, None)."""
    try:
        return True, json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False, None


@lru_cache(maxsize=256)
def _schema_validator(schema_text: str) -> Any:
    """The compiled validator of one JSON schema (its $schema's draft, Draft 2020-12 when it names none or an
    unknown one); ValueError naming the problem when the text is not JSON or not a valid schema."""
    ok, schema = _parsed_json(schema_text)
    if not ok:
        raise ValueError("is not valid JSON")
    try:
        cls = validator_for(schema, default=Draft202012Validator)
        cls.check_schema(schema)
    except SchemaError as err:
        raise ValueError(f"is not a valid JSON schema: {err.message}") from None
    return cls(schema)


def _score_json_schema(spec: ScorerSpec, outputs: pl.Series, references: pl.Series) -> pl.Series:
    """json_schema: the reference is a JSON schema (JSON text; not JSON or not a schema: ScorerError naming the
    row); the output, its one surrounding ``` fence stripped and trimmed (unfenced), parses as strict JSON and
    validates under the schema (jsonschema, validator_for with Draft 2020-12 the default; `format` not
    asserted). Validators are compiled once per distinct schema text (and cached across calls)."""
    verdicts: list[bool | None] = []
    texts = unfenced(outputs).to_list()
    for row, (output, reference) in enumerate(zip(texts, references.to_list(), strict=True)):
        if reference is None:
            verdicts.append(None)
            continue
        try:
            validator = _schema_validator(reference)
        except ValueError as err:
            raise ScorerError(f"row {row}: the json_schema scorer's reference {_shown(reference)} {err}") from None
        if output is None:
            verdicts.append(None)
            continue
        ok, instance = _parsed_json(output)
        try:
            verdicts.append(ok and bool(validator.is_valid(instance)))
        except Unresolvable as err:
            raise ScorerError(f"row {row}: the json_schema scorer's reference {_shown(reference)}: {err}") from None
    return pl.Series("correct", verdicts, dtype=pl.Boolean)


def reference_letter(reference: str) -> str | None:
    """A multiple-choice reference's letter, upper-cased: `B`, `b`, `(B)`, `B)`, `B.` (trimmed); None otherwise."""
    match = _REFERENCE_LETTER.fullmatch(reference)
    return match.group(1).upper() if match else None


def chosen_letter(output: str) -> str | None:
    """The letter a multiple-choice answer chose, upper-cased, in this order: the LAST `answer is (X)` /
    `answer: X` statement (_ANSWER_LETTER; the keyword in any case); else an output that is just a letter,
    optionally in parentheses or followed by `.` or `)` (trimmed); else the first capital A-J followed by `)` or
    `.` at a line's start (optionally after `(` and spaces: `B) Paris`, `(C) Rome`). None when nothing fits."""
    stated = list(_ANSWER_LETTER.finditer(output))
    if stated:
        last = stated[-1]
        return next(group for group in last.groups() if group is not None).upper()
    if match := _BARE_LETTER.fullmatch(output):
        return match.group(1).upper()
    if match := _LINE_LETTER.search(output):
        return match.group(1)
    return None


def _score_choice(spec: ScorerSpec, outputs: pl.Series, references: pl.Series) -> pl.Series:
    """choice: the reference's letter (reference_letter; A-Z, any case, `(B)`, `B)`, `B.`; anything else:
    ScorerError naming the row) equals the output's chosen letter (chosen_letter). No letter chosen: False."""
    verdicts: list[bool | None] = []
    for row, (output, reference) in enumerate(zip(outputs.to_list(), references.to_list(), strict=True)):
        if reference is None:
            verdicts.append(None)
            continue
        expected = reference_letter(reference)
        if expected is None:
            raise ScorerError(f"row {row}: the choice scorer's reference {_shown(reference)} is not a choice letter")
        verdicts.append(None if output is None else chosen_letter(output) == expected)
    return pl.Series("correct", verdicts, dtype=pl.Boolean)


_SCORERS: dict[str, Callable[[ScorerSpec, pl.Series, pl.Series], pl.Series]] = {
    "exact": _score_exact,
    "normalized": _score_normalized,
    "contains": _score_contains,
    "regex": _score_regex,
    "numeric": _score_numeric,
    "json_schema": _score_json_schema,
    "choice": _score_choice,
}


# ---- output checks ----------------------------------------------------------------------------


def _texts(series: pl.Series) -> pl.Series:
    return series.cast(pl.String)


def unfenced(outputs: pl.Series) -> pl.Series:
    """Each output with one surrounding ``` fence removed (FENCE_PATTERN: only when the whole output is one fenced
    block; any info string such as `json`), then trimmed. Null stays null."""
    return _texts(outputs).str.replace(FENCE_PATTERN, "${1}").str.strip_chars()


def _rust_escaped(text: str) -> str:
    return "".join("\\" + char if char in _RUST_META else char for char in text)


def _word_edge(char: str) -> str:
    return r"\b" if char.isalnum() or char == "_" else ""


def _apostrophes_plain(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'")


def refusal_pattern(phrases: Sequence[str]) -> str | None:
    """The one case-insensitive (polars) regex refusals searches for: any phrase, its words separated by any run
    of whitespace, whole words at its ends, apostrophes plain. None for no (non-blank) phrases."""
    alternatives = []
    for phrase in phrases:
        words = _apostrophes_plain(phrase).split()
        if words:
            body = r"\s+".join(_rust_escaped(word) for word in words)
            alternatives.append(_word_edge(words[0][0]) + body + _word_edge(words[-1][-1]))
    return "(?i)(?:" + "|".join(alternatives) + ")" if alternatives else None


def refusals(outputs: pl.Series, phrases: Sequence[str] = DEFAULT_REFUSAL_PHRASES) -> pl.Series:
    """A refusal: the output contains any of `phrases` (refusal_pattern): case-insensitive, the apostrophes ' and
    ’ (and ‘) alike, any whitespace between words, and whole words at the phrase's ends (`As an AI` does not
    match `has an air`). Null where the output is null; False everywhere else for no phrases."""
    texts = _texts(outputs)
    pattern = refusal_pattern(phrases)
    if pattern is None:
        return texts.to_frame("t").select(pl.when(pl.col("t").is_not_null()).then(False).alias("refusal")).to_series()
    return texts.str.replace_all("[\u2019\u2018]", "'").str.contains(pattern).rename("refusal")


def looks_like_json(outputs: pl.Series) -> pl.Series:
    """The output, unfenced and trimmed, starts with `{` or `[` (the baseline answered JSON). Null where null."""
    text = unfenced(outputs)
    return (text.str.starts_with("{") | text.str.starts_with("[")).rename("looks_like_json")


def json_valid(outputs: pl.Series) -> pl.Series:
    """The output, unfenced and trimmed, parses as strict JSON (no NaN or Infinity) and is an object or an
    array. Null where the output is null."""
    texts = unfenced(outputs).to_list()
    shaped = looks_like_json(outputs).to_list()
    verdicts: list[bool | None] = []
    for text, candidate in zip(texts, shaped, strict=True):
        if text is None:
            verdicts.append(None)
        elif not candidate:
            verdicts.append(False)
        else:
            ok, value = _parsed_json(text)
            verdicts.append(ok and isinstance(value, dict | list))
    return pl.Series("json_valid", verdicts, dtype=pl.Boolean)


def asks_for_json(params: pl.Series) -> pl.Series:
    """The request asked for JSON: its `params` (the traffic log's JSON text of request fields) has
    `response_format.type` in JSON_RESPONSE_FORMATS (`json_object`, `json_schema`). False for null or
    unparseable params or any other response format; never null."""
    kind = _texts(params).str.json_path_match("$.response_format.type")
    return kind.is_in(list(JSON_RESPONSE_FORMATS)).fill_null(False).rename("asks_for_json")
