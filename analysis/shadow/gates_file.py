"""A gates file (`configs/gates/*.yaml`): the rollback triggers of a shadow comparison, written before
cutover and judged by analysis/shadow/gate_judgement.py (docs/DESIGN.md, "Shadow gates").

```yaml
alpha: 0.05            # false-alarm bound over the whole shadow period, all gates together
window: 1h             # reporting windows (and the starts of the breach search's stretches)
refusal_phrases: [...] # optional: what counts as a refusal (default: scorers.DEFAULT_REFUSAL_PHRASES)
judge: {target: judge.yaml, rate: 5}   # optional: an LLM grading answers, for `scorer: judge` (JudgeSpec)
gates:
  - {name: ttft-sla, metric: ttft_p95_ms, max: 500}                          # absolute, on the candidate
  - {name: accuracy, metric: accuracy, scorer: normalized, max_drop: 0.02}   # against the baseline
  - {name: errors, metric: error_rate, max_increase: 0.01}                   # against the baseline
```

Metrics (GateSpec.metric) and the limits each takes:
- `ttft_pNN_ms`, `tpot_pNN_ms`, `e2e_pNN_ms` (NN a percentile, e.g. 95 or 99.9): the candidate's own
  latency over its `ok` requests, `max` (an SLA) or `min`.
- `length_ratio` (the median) or `length_ratio_pNN`: the candidate's output tokens over the baseline's,
  request by request, `max` or `min`.
- `error_rate`, `refusal_rate`, `truncation_rate` (finish reason `length`): `max` on the candidate alone,
  or `max_increase` over the baseline.
- `accuracy` (with a `scorer`) and `json_valid_rate`: `min` on the candidate alone, or `max_drop` below
  the baseline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shadowreplay.analysis.shadow.scorers import DEFAULT_REFUSAL_PHRASES, ScorerSpec
from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.config_files import read_yaml_mapping, validation_problems
from shadowreplay.replay.schemas.durations import DurationError, parse_duration_s

LATENCY_METRICS = ("ttft", "tpot", "e2e")
BAD_RATES = ("error_rate", "refusal_rate", "truncation_rate")
"""Rates of something going wrong: a gate bounds them from above (`max`, `max_increase`)."""
GOOD_RATES = ("accuracy", "json_valid_rate")
"""Rates of something going right: a gate bounds them from below (`min`, `max_drop`)."""
_LATENCY = re.compile(r"^(ttft|tpot|e2e)_p(\d+(?:\.\d+)?)_ms$")
_LENGTH = re.compile(r"^length_ratio(?:_p(\d+(?:\.\d+)?))?$")
LIMITS = ("max", "min", "max_increase", "max_drop")


class GatesFileError(ShadowReplayError, ValueError):
    """A gates file that cannot be read or holds an invalid gate (the message names the file and field)."""


@dataclass(frozen=True)
class GateMeasure:
    """What a gate's metric name means: `family` (`latency`, `length_ratio` or `rate`), `quantity` (`ttft`,
    `tpot`, `e2e`, `length_ratio`, or the rate's name) and `percentile` (quantile metrics); a rate's bad
    direction is its name's (BAD_RATES, GOOD_RATES)."""

    family: Literal["latency", "length_ratio", "rate"]
    quantity: str
    percentile: float | None = None

    @property
    def is_quantile(self) -> bool:
        return self.family != "rate"


def parse_metric(metric: str) -> GateMeasure:
    """A gate's metric name as a GateMeasure; ValueError naming the known metrics for an unknown one."""
    if match := _LATENCY.match(metric):
        return GateMeasure("latency", match.group(1), _percentile(match.group(2)))
    if match := _LENGTH.match(metric):
        return GateMeasure("length_ratio", "length_ratio", _percentile(match.group(1) or "50"))
    if metric in BAD_RATES or metric in GOOD_RATES:
        return GateMeasure("rate", metric)
    known = ", ".join(["ttft_pNN_ms", "tpot_pNN_ms", "e2e_pNN_ms", "length_ratio[_pNN]", *BAD_RATES, *GOOD_RATES])
    raise ValueError(f"unknown metric {metric!r}; known: {known}")


def _percentile(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 100.0:
        raise ValueError(f"percentile {text}: must be within (0, 100)")
    return value


class GateSpec(BaseModel):
    """One rollback trigger: a metric and exactly one limit (`max`, `min` on the candidate; `max_increase`,
    `max_drop` against the baseline)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    metric: str
    max: float | None = None
    min: float | None = None
    max_increase: float | None = Field(default=None, ge=0.0)
    max_drop: float | None = Field(default=None, ge=0.0)
    scorer: ScorerSpec | None = None

    @field_validator("scorer", mode="before")
    @classmethod
    def _scorer(cls, value: Any) -> Any:
        return ScorerSpec.parse(value) if isinstance(value, str | dict) else value

    @model_validator(mode="after")
    def _limits(self) -> GateSpec:
        measure = parse_metric(self.metric)
        given = [name for name in LIMITS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"gate {self.name!r}: give exactly one of {', '.join(LIMITS)} (got {given or 'none'})")
        limit = given[0]
        if measure.is_quantile and limit not in ("max", "min"):
            raise ValueError(
                f"gate {self.name!r}: {self.metric} takes max or min (a bound on the candidate's percentile); "
                "a percentile's increase over the baseline is not judged yet"
            )
        if measure.quantity in BAD_RATES and limit not in ("max", "max_increase"):
            raise ValueError(f"gate {self.name!r}: {self.metric} takes max or max_increase")
        if measure.quantity in GOOD_RATES and limit not in ("min", "max_drop"):
            raise ValueError(f"gate {self.name!r}: {self.metric} takes min or max_drop")
        if measure.family == "rate" and limit in ("max", "min") and not 0.0 <= float(getattr(self, limit)) <= 1.0:
            raise ValueError(f"gate {self.name!r}: a rate's {limit} must be within [0, 1]")
        if (measure.quantity == "accuracy") != (self.scorer is not None):
            raise ValueError(f"gate {self.name!r}: a scorer goes with metric accuracy, and accuracy needs one")
        return self

    @property
    def measure(self) -> GateMeasure:
        return parse_metric(self.metric)

    @property
    def limit(self) -> str:
        """Which limit the gate sets: max, min, max_increase or max_drop."""
        return next(name for name in LIMITS if getattr(self, name) is not None)

    @property
    def limit_value(self) -> float:
        return float(getattr(self, self.limit))

    @property
    def against_baseline(self) -> bool:
        """The gate compares the candidate with the baseline request by request (max_increase, max_drop, and
        length ratios)."""
        return self.limit in ("max_increase", "max_drop") or self.measure.family == "length_ratio"

    @property
    def condition(self) -> str:
        """The limit as a reader says it: `ttft_p95_ms <= 500`, `accuracy drop <= 0.02`."""
        symbol = {"max": "<=", "min": ">=", "max_increase": "increase <=", "max_drop": "drop <="}[self.limit]
        scorer = f" ({self.scorer.label})" if self.scorer is not None else ""
        return f"{self.metric}{scorer} {symbol} {self.limit_value:g}"


DEFAULT_RUBRIC = (
    "You are grading an answer to a request.\n\nRequest:\n{question}\n\nReference answer (may be empty):\n"
    "{reference}\n\nAnswer to grade:\n{answer}\n\nIs the answer correct, and consistent with the reference where "
    "one is given? Reply with exactly one word: PASS or FAIL."
)
RUBRIC_FIELDS = ("{question}", "{answer}", "{reference}")


class JudgeSpec(BaseModel):
    """An LLM that scores answers (`scorer: judge`): each answer of each side is sent to `target` (a target file,
    relative to the gates file) as `rubric` with {question}, {answer} and {reference} filled in, at `rate`
    requests a second, asking at most `max_tokens`; the answer is right where `pass_pattern` (a regex, case
    ignored) is found in the judge's reply. The judge's calls are a run of their own (RUN_DIR/judge), rows,
    cost and all."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Path
    rubric: str = DEFAULT_RUBRIC
    pass_pattern: str = r"\bPASS\b"
    rate: float = Field(default=5.0, gt=0.0)
    max_tokens: int = Field(default=16, gt=0)

    @field_validator("rubric")
    @classmethod
    def _rubric(cls, value: str) -> str:
        if "{answer}" not in value:
            raise ValueError("a rubric must hold {answer} (and may hold {question} and {reference})")
        return value

    @field_validator("pass_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"pass_pattern {value!r} does not compile: {exc}") from None
        return value

    def prompt(self, question: str, answer: str, reference: str | None) -> str:
        """The rubric with the request, the answer and the reference (empty where none) in place."""
        text = self.rubric.replace("{question}", question).replace("{reference}", reference or "")
        return text.replace("{answer}", answer)


class GatesFile(BaseModel):
    """A gates file, validated: `alpha` is shared by every gate (each is judged at alpha / number of gates)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    window: str = "1h"
    refusal_phrases: tuple[str, ...] = DEFAULT_REFUSAL_PHRASES
    judge: JudgeSpec | None = None
    gates: tuple[GateSpec, ...] = Field(min_length=1)

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        try:
            seconds = parse_duration_s(str(value), "window")
        except DurationError as exc:
            raise ValueError(str(exc)) from None
        if seconds <= 0:
            raise ValueError("window must be positive")
        return str(value)

    @model_validator(mode="after")
    def _names(self) -> GatesFile:
        names = [gate.name for gate in self.gates]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"gate names must be distinct: {', '.join(duplicated)} given twice")
        judged = [gate.name for gate in self.gates if gate.scorer is not None and gate.scorer.kind == "judge"]
        if judged and self.judge is None:
            raise ValueError(f"gate {judged[0]!r} scores by judge: give a `judge` (its target file, and a rubric)")
        return self

    @property
    def uses_judge(self) -> bool:
        return any(scorer.kind == "judge" for scorer in self.scorers)

    @property
    def window_s(self) -> float:
        return parse_duration_s(self.window, "window")

    @property
    def alpha_per_gate(self) -> float:
        """Bonferroni: the gates' false alarms together stay within alpha."""
        return self.alpha / len(self.gates)

    @property
    def scorers(self) -> tuple[ScorerSpec, ...]:
        """The distinct scorers the gates name, in order."""
        found: list[ScorerSpec] = []
        for gate in self.gates:
            if gate.scorer is not None and gate.scorer not in found:
                found.append(gate.scorer)
        return tuple(found)


def load_gates(path: Path) -> GatesFile:
    """The gates file at `path`; GatesFileError naming the file and the field for anything wrong in it."""
    raw = read_yaml_mapping(path, "gates file", GatesFileError, "alpha, window and a list of gates")
    judge = raw.get("judge")
    if isinstance(judge, dict) and isinstance(judge.get("target"), str):  # relative to the gates file
        raw["judge"] = {**judge, "target": str((path.parent / judge["target"]).resolve())}
    try:
        return GatesFile.model_validate(raw)
    except ValidationError as exc:
        raise GatesFileError(f"{path}: invalid gates: {validation_problems(exc)}") from None
