"""Was the load offered as recorded? The checks that fire when the client, not the server, shaped
a run's figures.

A replay's latencies describe the server only while the load generator keeps its schedule and reads
tokens as they come. Each check below reads one figure per target and, past its limit, gives a
`LoadWarning` naming the figure, its value, the limit, what it means and what to do. `report` prints
them loudly, summary.json keeps them (`load_warnings`), and `replay --strict` exits non-zero on any.

- `SendLateness`: send lateness p99 (analysis/metrics/table.py `lateness`: send - scheduled send,
  over final rows that were sent) above `limit_ms` (default 10 ms). The requests went out later
  than recorded, so the load the server saw was not the recorded one, and every from-scheduled
  latency includes the client's own delay.
- `ZeroGapReads`: more than `share` (default half) of a target's ITL gaps are exactly 0 ms (the
  summary's `multi_token_reads`), while vLLM's own ITL histogram for that target (the
  server_histograms block) has a mean above `server_itl_ms` (default 1 ms). Tokens the server
  produced apart were read together: the client read late, so its ITL and TPOT are not the
  server's. Without the server's histogram (a hosted API, which may send several tokens per chunk
  by design) this check does not fire.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shadowreplay.analysis.summary.models import LoadWarning, TargetSummary

REMEDY = (
    "give the load generator the CPU it needs (replay workers at nice 0 on their own cores, fewer processes "
    "beside the server), or replay at a lower --speed"
)


class LoadCheck(Protocol):
    """One check: its name, and a warning for one target's figures, or None."""

    @property
    def name(self) -> str: ...

    def check(self, target: str, stats: TargetSummary, server_itl_mean_ms: float | None) -> LoadWarning | None: ...


@dataclass(frozen=True)
class SendLateness:
    limit_ms: float = 10.0
    name: str = "send_lateness"

    def check(self, target: str, stats: TargetSummary, server_itl_mean_ms: float | None) -> LoadWarning | None:
        p99 = stats.all.latency_ms["lateness"].p99
        if p99 is None or p99 <= self.limit_ms:
            return None
        return LoadWarning(
            check=self.name,
            target=target,
            figure="send lateness p99 (ms)",
            value=p99,
            limit=self.limit_ms,
            message=(
                f"{target}: send lateness p99 {p99:.1f} ms > {self.limit_ms:g} ms: the client fell behind its "
                "schedule, so the load was not offered as recorded and the from-scheduled latencies include "
                f"the client's own delay; {REMEDY}"
            ),
        )


@dataclass(frozen=True)
class ZeroGapReads:
    share: float = 0.5
    server_itl_ms: float = 1.0
    name: str = "zero_gap_reads"

    def check(self, target: str, stats: TargetSummary, server_itl_mean_ms: float | None) -> LoadWarning | None:
        zero_gap_share = stats.all.multi_token_reads.share
        if zero_gap_share is None or server_itl_mean_ms is None:
            return None
        if zero_gap_share <= self.share or server_itl_mean_ms <= self.server_itl_ms:
            return None
        return LoadWarning(
            check=self.name,
            target=target,
            figure="share of ITL gaps that are exactly 0 ms",
            value=zero_gap_share,
            limit=self.share,
            message=(
                f"{target}: {zero_gap_share:.0%} of ITL gaps are exactly 0 ms (tokens read together) while vLLM's "
                f"own ITL mean is {server_itl_mean_ms:.1f} ms: the client read late, so its ITL and TPOT are not "
                f"the server's; {REMEDY}"
            ),
        )


CHECKS: tuple[LoadCheck, ...] = (SendLateness(), ZeroGapReads())


def load_checks(max_lateness_ms: float = SendLateness.limit_ms) -> tuple[LoadCheck, ...]:
    """The checks, with the send-lateness limit given (`--max-lateness-ms`)."""
    return (SendLateness(limit_ms=max_lateness_ms), ZeroGapReads())


def _server_itl_means(server_histograms: dict[str, Any]) -> dict[str, float | None]:
    if server_histograms.get("status") != "compared":
        return {}
    means = {}
    for name, entry in server_histograms.get("targets", {}).items():
        itl = entry.get("metrics", {}).get("itl", {})
        means[name] = (itl.get("mean_ms") or {}).get("vllm") if itl.get("status") == "compared" else None
    return means


def load_warnings(
    targets: dict[str, TargetSummary], server_histograms: dict[str, Any], checks: Sequence[LoadCheck] = CHECKS
) -> list[LoadWarning]:
    """Every check's warning for every target, in target order, from the summary's figures."""
    server_itl = _server_itl_means(server_histograms)
    warnings = []
    for name, stats in targets.items():
        for rule in checks:
            warning = rule.check(name, stats, server_itl_mean_ms=server_itl.get(name))
            if warning is not None:
                warnings.append(warning)
    return warnings
