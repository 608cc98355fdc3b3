"""`report --check`: every SLO of a run, per target, as a verdict a CI job can exit on.

The check reads the SLO results of the summary (analysis/summary/run_summary.py, STATS `slo`) of each
target's whole slice (`all`; tags are shown in the tables, not checked). One verdict per target and SLO:
- met: the target's percentile of the metric is within the threshold (`value_ms <= threshold_ms`);
- missed: it is above; the verdict says by how much (`over_ms` = value - threshold, and as a share of
  the threshold);
- no data: no final ok request to take the percentile of; it counts as missed, since a check that
  could not measure must not pass a release.
Exit codes: 0 when every verdict is met; 1 when any is missed or has no data. A check without SLOs
has nothing to decide: the verb refuses it as a usage error (exit 2) before reading the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shadowreplay.analysis.summary.models import RunSummary

CHECK_PASSED = 0
CHECK_FAILED = 1

Verdict = Literal["met", "missed", "no data"]


@dataclass(frozen=True)
class SloVerdict:
    """One SLO on one target: the figure, the threshold, the verdict and how far from the threshold."""

    target: str
    slo: str  # canonical text, e.g. `ttft_p95=500ms`
    threshold_ms: float
    value_ms: float | None
    verdict: Verdict

    @property
    def over_ms(self) -> float | None:
        """value - threshold: > 0 missed by that much, <= 0 the headroom; None without data."""
        return None if self.value_ms is None else self.value_ms - self.threshold_ms

    @property
    def passed(self) -> bool:
        return self.verdict == "met"

    def line(self) -> str:
        """`MISSED ttft_p95=500ms on candidate: 612.3 ms, 112.3 ms over the threshold (+22.5%)`."""
        head = f"{self.verdict.upper():<7} {self.slo} on {self.target}: "
        over = self.over_ms
        if over is None:
            return head + "no final ok request to measure it (counts as missed)"
        share = over / self.threshold_ms
        if over > 0:
            return head + f"{self.value_ms:,.1f} ms, {over:,.1f} ms over the threshold ({share:+.1%})"
        return head + f"{self.value_ms:,.1f} ms, {-over:,.1f} ms under the threshold ({share:+.1%})"


def slo_verdicts(summary: RunSummary) -> list[SloVerdict]:
    """One verdict per target (in the summary's order) and SLO (in the order given)."""
    verdicts = []
    for target, entry in summary.targets.items():
        for result in entry.all.slo:
            verdict: Verdict = "no data" if result.met is None else "met" if result.met else "missed"
            verdicts.append(SloVerdict(target, result.slo, result.threshold_ms, result.value_ms, verdict))
    return verdicts


def check_exit_code(verdicts: list[SloVerdict]) -> int:
    """CHECK_PASSED (0) when every verdict is met, else CHECK_FAILED (1)."""
    return CHECK_PASSED if all(verdict.passed for verdict in verdicts) else CHECK_FAILED


def check_lines(verdicts: list[SloVerdict]) -> list[str]:
    """The verdicts, then one line with the outcome and the exit code."""
    failed = [verdict for verdict in verdicts if not verdict.passed]
    targets = {verdict.target for verdict in verdicts}
    failed_targets = sorted({verdict.target for verdict in failed})
    if failed:
        outcome = (
            f"check FAILED: {len(failed)} of {len(verdicts)} SLO verdicts missed, on "
            f"{len(failed_targets)} of {len(targets)} target(s) ({', '.join(failed_targets)}); exit {CHECK_FAILED}"
        )
    else:
        outcome = f"check passed: all {len(verdicts)} SLO verdicts met on {len(targets)} target(s); exit {CHECK_PASSED}"
    return [*(verdict.line() for verdict in verdicts), outcome]
