"""A traffic volume as users state it, and what factor of a log's own volume it is.

`TrafficVolume.parse`: `2x` / `0.5x` (a factor of the log's own), `120rps` (a mean request rate),
`300M-tokens/month` (prompt + completion tokens, as APIs bill them) or `40M-output-tokens/month`
(k, M, G, T scale the tokens; a month is 30 days, as everywhere in shadowreplay). `factor` turns
it into a factor of a log's own volume from the log's totals (`LogVolume`): its mean rate is
(n - 1) / span, its tokens a month sum(tokens) / span x 30 days. `replay --volume` (loadgen/volume.py)
and `capacity --volume` (analysis/capacity/demand.py) read volumes here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from shadowreplay.analysis.summary.traffic_stats import SECONDS_PER_MONTH
from shadowreplay.errors import UserError

Unit = Literal["x", "rps", "tokens/month", "output-tokens/month"]
_SPEC = re.compile(
    r"^(?P<number>[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)(?P<scale>[kKMGT]?)(?P<unit>x|rps|-tokens/month|-output-tokens/month)$"
)
_SCALES = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


@dataclass(frozen=True)
class LogVolume:
    """A log's (or its selection's) totals: requests, span of arrivals (s), prompt and completion tokens."""

    requests: int
    span_s: float
    prompt_tokens: int
    completion_tokens: int

    @property
    def rate_rps(self) -> float | None:
        """(n - 1) / span; None for fewer than two arrivals or no span."""
        return (self.requests - 1) / self.span_s if self.requests >= 2 and self.span_s > 0 else None

    def tokens_per_month(self, output_only: bool = False) -> float | None:
        tokens = self.completion_tokens + (0 if output_only else self.prompt_tokens)
        return tokens / self.span_s * SECONDS_PER_MONTH if self.span_s > 0 and tokens > 0 else None


@dataclass(frozen=True)
class TrafficVolume:
    """A volume of traffic: `value` in `unit` (module docstring); `spec` as the user wrote it."""

    value: float
    unit: Unit
    spec: str

    @classmethod
    def parse(cls, spec: str) -> TrafficVolume:
        match = _SPEC.match(spec.strip())
        if match is None:
            raise UserError(
                f"--volume {spec!r}: write a factor (2x, 0.5x), a rate (120rps) or tokens a month "
                "(300M-tokens/month, 40M-output-tokens/month)"
            )
        value = float(match["number"]) * _SCALES[match["scale"]]
        if match["scale"] and match["unit"] in ("x", "rps"):
            raise UserError(f"--volume {spec!r}: k/M/G apply to tokens a month, not to {match['unit']}")
        if value <= 0:
            raise UserError(f"--volume {spec!r} must be positive")
        unit: Unit = match["unit"].lstrip("-")  # type: ignore[assignment]
        return cls(value, unit, spec.strip())

    def factor(self, log: LogVolume) -> float:
        """This volume as a factor of `log`'s own."""
        if self.unit == "x":
            return self.value
        if self.unit == "rps":
            rate = log.rate_rps
            if rate is None:
                raise UserError(f"--volume {self.spec}: the log's rows span no time, so they have no rate to scale")
            return self.value / rate
        monthly = log.tokens_per_month(output_only=self.unit == "output-tokens/month")
        if monthly is None:
            what = "completion_tokens" if self.unit == "output-tokens/month" else "prompt_tokens or completion_tokens"
            raise UserError(f"--volume {self.spec}: the log's rows span no time or record no {what}")
        return self.value / monthly
