"""Service-level objectives: `ttft_p95=500ms,tpot_p95=50ms,e2e_p99=2s` parsed into typed `Slo` objects.

Grammar of one item: `<metric>_p<percentile>=<number><unit>`, items separated by commas, spaces
around items and `=` ignored.
- metric: one of `SLO_METRICS` (the metrics of analysis/metrics/table.py's METRICS that an SLO may use);
- percentile: a number in (0, 100], e.g. `p50`, `p95`, `p99.9`;
- number: a finite positive decimal (`500`, `0.5`, `1e3`); unit: `ms` or `s` (lower case).
Thresholds are kept in milliseconds. `str(slo)` is the canonical text (`ttft_p95=500ms`) and parses
back to an equal `Slo`. A metric and percentile may appear once in a list.

How an SLO is applied (analysis/metrics/table.py): at the percentile level, the run's percentile of the
metric must be within the threshold; per request (for goodput), the request's own value must be
within it (for ITL, the same percentile of the request's own gaps).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from shadowreplay.analysis.metrics.table import METRICS
from shadowreplay.errors import ShadowReplayError

SLO_METRICS: dict[str, str] = {metric.name: metric.formula for metric in METRICS if metric.slo}
"""The metrics an SLO may name (those of the metric table marked `slo`), with their formulas."""

UNIT_TO_MS: dict[str, float] = {"ms": 1.0, "s": 1000.0}

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_ITEM = re.compile(
    rf"^(?P<metric>[a-z][a-z0-9_]*?)_p(?P<percentile>{_NUMBER})\s*=\s*(?P<value>{_NUMBER})(?P<unit>ms|s)$"
)
EXAMPLE = "ttft_p95=500ms,tpot_p95=50ms,e2e_p99=2s"


class SloError(ShadowReplayError, ValueError):
    """An SLO text that does not follow the grammar; the message names the offending item."""


@dataclass(frozen=True, slots=True)
class Slo:
    """One objective: the `percentile` of `metric` must be at most `threshold_ms` milliseconds."""

    metric: str
    percentile: float
    threshold_ms: float

    def __post_init__(self) -> None:
        if self.metric not in SLO_METRICS:
            raise SloError(f"unknown SLO metric {self.metric!r}; known: {', '.join(SLO_METRICS)}")
        if not (math.isfinite(self.percentile) and 0.0 < self.percentile <= 100.0):
            raise SloError(f"percentile {self.percentile!r} of {self.metric} is not in (0, 100]")
        if not (math.isfinite(self.threshold_ms) and self.threshold_ms > 0.0):
            raise SloError(f"threshold {self.threshold_ms!r} ms of {self.metric} is not a finite positive number")

    @property
    def name(self) -> str:
        """The objective without its threshold, e.g. `ttft_p95`."""
        return f"{self.metric}_p{format_number(self.percentile)}"

    def __str__(self) -> str:
        return f"{self.name}={format_number(self.threshold_ms)}ms"

    @classmethod
    def parse(cls, item: str) -> Slo:
        """Parse one item such as `ttft_p95=500ms` or `e2e_p99=2s`."""
        text = item.strip()
        match = _ITEM.match(text)
        if match is None:
            raise SloError(f"cannot read SLO {item!r}: expected <metric>_p<percentile>=<number>ms|s, e.g. {EXAMPLE}")
        metric = match["metric"]
        if metric not in SLO_METRICS:
            raise SloError(f"SLO {text!r}: unknown metric {metric!r}; known: {', '.join(SLO_METRICS)}")
        percentile = float(match["percentile"])
        threshold_ms = float(match["value"]) * UNIT_TO_MS[match["unit"]]
        try:
            return cls(metric, percentile, threshold_ms)
        except SloError as exc:
            raise SloError(f"SLO {text!r}: {exc}") from None


def parse_slos(text: str) -> tuple[Slo, ...]:
    """Parse a comma-separated SLO list (`ttft_p95=500ms,tpot_p95=50ms`); raise SloError on bad input."""
    items = text.split(",")
    if not text.strip() or any(not item.strip() for item in items):
        raise SloError(f"empty SLO item in {text!r}; expected e.g. {EXAMPLE}")
    slos = tuple(Slo.parse(item) for item in items)
    seen: set[str] = set()
    for slo in slos:
        if slo.name in seen:
            raise SloError(f"SLO {slo.name} given twice in {text!r}")
        seen.add(slo.name)
    return slos


def format_slos(slos: Iterable[Slo]) -> str:
    """The canonical text of an SLO list; `parse_slos(format_slos(s)) == tuple(s)`."""
    return ",".join(str(slo) for slo in slos)


def format_number(value: float) -> str:
    """Shortest text that reads back as the same float, without a trailing `.0` (500.0 -> `500`)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text
