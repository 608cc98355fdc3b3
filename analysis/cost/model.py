"""The cost model: what a run cost per target, per million tokens, and projected to a month.

Definitions (stated once; `DEFINITIONS` carries them into summary.json):
- Billed tokens: over final rows with status ok (failed requests are not billed unless the price
  file's `billing.failed_requests` is true; retried attempts never are). Input = server usage
  `prompt_tokens`, else the length the replay sent; output = server usage `completion_tokens`,
  else the client's count (analysis/metrics/table.py `input_tokens`, `output_tokens`). Cached input = 0:
  results schema v1 records no cached prompt tokens, so every input token bills at the input price.
- Hosted (token-priced) cost = ((input - cached) x input price + cached x cached price + output x
  output price) / 1e6, prices in USD per million tokens.
- Self-hosted cost = cost per hour x run hours; cost per hour = GPU lease per GPU-hour x GPU count
  + engineering per month / 720 h; the run lasts from the first scheduled send to the last
  request done (the target's final rows).
- Cost per 1M output tokens = run cost / billed output tokens x 1e6 (input cost included: what a
  million generated tokens cost with this traffic's prompts); per 1M tokens = run cost / (billed
  input + output tokens) x 1e6.
- Monthly volume (a month is 30 days): `run_span` (default): the run's billed usage / schedule span
  x 30 days; `requests`: N requests per month at the run's mean usage per billed request;
  `tokens`: N (input + output) tokens per month in the run's input/output mix; `traffic_log`: the
  traffic log's own monthly tokens (analysis/summary/traffic_stats.py), in the run's mix.
- Monthly cost, hosted = the monthly usage at the entry's prices. Self-hosted = deployments x GPU
  lease x GPU count x 720 h + engineering, deployments = ceil(monthly output tokens / (capacity x
  seconds per month)), capacity = the entry's `capacity_output_tokens_per_s` if given, else the
  target's output tokens/s in the run's steady window (a run below saturation understates the
  capacity and so overstates the deployments).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

from shadowreplay.analysis.cost.prices import HOURS_PER_MONTH, PriceBook, PriceMatch, SelfHostedPrice, TokenPrice
from shadowreplay.analysis.metrics import table as metrics
from shadowreplay.analysis.summary.traffic_stats import SECONDS_PER_MONTH
from shadowreplay.errors import ShadowReplayError

MTOK = 1_000_000

DEFINITIONS = {
    "billed_requests": "final rows with status ok (and failed final rows when billing.failed_requests is true); "
    "retried attempts are never billed",
    "tokens": "input = server prompt_tokens, else the length sent; output = server completion_tokens, else the "
    "client count; cached input = 0 (results schema v1 records no cached prompt tokens)",
    "hosted_cost": "((input - cached) x input price + cached x cached price + output x output price) / 1e6",
    "self_hosted_cost": "(GPU lease per GPU-hour x GPU count + engineering per month / 720 h) x run hours; "
    "run = first scheduled send to last request done",
    "cost_per_mtok": "output: run cost / billed output tokens x 1e6; total: run cost / (input + output tokens) x 1e6",
    "monthly": "a month is 30 days; hosted: the monthly usage at the entry's prices; self-hosted: deployments x "
    "lease x GPU count x 720 h + engineering, deployments = ceil(monthly output tokens / (capacity x month)), "
    "capacity = the entry's capacity_output_tokens_per_s else the run's steady output tokens/s",
}


class CostError(ShadowReplayError, ValueError):
    """A monthly volume that cannot be used (not positive, or a traffic log without token counts)."""


@dataclass(frozen=True, slots=True)
class MonthlyVolume:
    """How much traffic a month carries: from the run's own schedule span, or a given number."""

    basis: Literal["run_span", "requests", "tokens", "traffic_log"]
    per_month: float | None = None  # requests or tokens per month; None for run_span

    def __post_init__(self) -> None:
        if self.basis == "run_span":
            if self.per_month is not None:
                raise CostError("a run_span volume takes no number")
        elif self.per_month is None or not math.isfinite(self.per_month) or self.per_month <= 0:
            raise CostError(f"monthly {self.basis} must be a positive number, got {self.per_month!r}")

    def describe(self) -> str:
        if self.basis == "run_span":
            return "the run's billed usage per second of its schedule span x 30 days"
        if self.basis == "requests":
            return f"{self.per_month:,.0f} requests per month at the run's mean usage per billed request"
        source = "the traffic log's" if self.basis == "traffic_log" else "given"
        return f"{self.per_month:,.0f} tokens (input + output) per month ({source}), in the run's input/output mix"


RUN_SPAN = MonthlyVolume("run_span")


@dataclass(frozen=True, slots=True)
class Usage:
    """Billed requests and tokens of one target (or a month of them)."""

    requests: float
    input_tokens: float
    cached_input_tokens: float
    output_tokens: float

    @property
    def total_tokens(self) -> float:
        """input + output tokens (cached input is part of input)."""
        return self.input_tokens + self.output_tokens

    def scaled(self, factor: float) -> Usage:
        return Usage(
            *(
                value * factor
                for value in (self.requests, self.input_tokens, self.cached_input_tokens, self.output_tokens)
            )
        )


def billed_usage(final_rows: pl.LazyFrame, bill_failed: bool = False) -> dict[str, tuple[Usage, int]]:
    """Per target: its billed Usage and how many billed rows had no server prompt_tokens (length sent used)."""
    billed = metrics.is_billed(bill_failed)
    query = final_rows.group_by("target").agg(
        billed.sum().alias("requests"),
        metrics.input_tokens().filter(billed).sum().alias("input_tokens"),
        metrics.cached_input_tokens().filter(billed).sum().alias("cached_input_tokens"),
        metrics.output_tokens().filter(billed).sum().alias("output_tokens"),
        (billed & pl.col("prompt_tokens").is_null()).sum().alias("input_from_sent_length"),
    )
    frame = query.collect(engine="streaming")
    return {
        row["target"]: (
            Usage(row["requests"], row["input_tokens"], row["cached_input_tokens"], row["output_tokens"]),
            row["input_from_sent_length"],
        )
        for row in frame.iter_rows(named=True)
    }


def token_cost_usd(usage: Usage, price: TokenPrice) -> float:
    """Hosted cost = ((input - cached) x input + cached x cached-input + output x output price) / 1e6, USD."""
    uncached = usage.input_tokens - usage.cached_input_tokens
    return (
        uncached * price.input_per_mtok
        + usage.cached_input_tokens * price.cached_input_or_input_per_mtok
        + usage.output_tokens * price.output_per_mtok
    ) / MTOK


def self_hosted_cost_usd(duration_s: float, price: SelfHostedPrice) -> float:
    """Self-hosted cost = (lease per GPU-hour x GPU count + engineering per month / 720 h) x duration_s / 3600, USD."""
    return price.usd_per_hour * duration_s / 3600.0


def cost_per_mtok(cost_usd: float, tokens: float) -> float | None:
    """Cost per million tokens = cost / tokens x 1e6; None with no tokens."""
    return cost_usd / tokens * MTOK if tokens > 0 else None


def self_hosted_monthly_usd(deployments: int, price: SelfHostedPrice) -> float:
    """Self-hosted monthly cost = deployments x lease per GPU-hour x GPU count x 720 h + engineering per month."""
    return deployments * price.gpu_usd_per_hour * HOURS_PER_MONTH + price.engineering_usd_per_month


def run_duration_s(final_rows: pl.LazyFrame) -> dict[str, float]:
    """Per target: last done_s - first scheduled_s over its final rows (how long the run held the deployment)."""
    span = (pl.col("done_s").max() - pl.col("scheduled_s").min()).alias("span")
    frame = final_rows.group_by("target").agg(span).collect(engine="streaming")
    return {target: max(span or 0.0, 0.0) for target, span in frame.iter_rows()}


def monthly_factor(volume: MonthlyVolume, usage: Usage, schedule_span_s: float) -> tuple[float | None, str | None]:
    """The multiplier from the run's billed usage to a month's, or None with the reason."""
    if volume.basis == "run_span":
        if schedule_span_s <= 0:
            return None, "the schedule spans 0 s (every request at once): give --monthly-requests or --monthly-tokens"
        return SECONDS_PER_MONTH / schedule_span_s, None
    per_month = volume.per_month
    assert per_month is not None  # MonthlyVolume.__post_init__ requires a number for every basis but run_span
    if volume.basis == "requests":
        if usage.requests <= 0:
            return None, "no billed requests to take a mean usage from"
        return per_month / usage.requests, None
    if usage.total_tokens <= 0:
        return None, "no billed tokens to take the input/output mix from"
    return per_month / usage.total_tokens, None


def _usage_dict(usage: Usage) -> dict[str, float]:
    return {
        "requests": usage.requests,
        "input_tokens": usage.input_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
    }


def _monthly(
    match: PriceMatch, usage: Usage, factor: float | None, reason: str | None, steady_output_tps: float | None
) -> dict[str, Any]:
    if factor is None:
        return {"usage": None, "cost_usd": None, "reason": reason}
    month = usage.scaled(factor)
    result: dict[str, Any] = {"usage": _usage_dict(month), "cost_usd": None, "reason": None}
    entry = match.entry
    if isinstance(entry, TokenPrice):
        result["cost_usd"] = token_cost_usd(month, entry)
        return result
    assert isinstance(entry, SelfHostedPrice)
    capacity = entry.capacity_output_tokens_per_s or steady_output_tps
    result["capacity_output_tokens_per_s"] = capacity
    result["capacity_from"] = "price entry" if entry.capacity_output_tokens_per_s else "run steady window"
    if not capacity:
        result["reason"] = "no output tokens/s in the steady window to size deployments with"
        return result
    deployments = max(1, math.ceil(month.output_tokens / (capacity * SECONDS_PER_MONTH)))
    result["deployments"] = deployments
    result["cost_usd"] = self_hosted_monthly_usd(deployments, entry)
    return result


def target_cost(
    match: PriceMatch,
    usage: Usage,
    input_from_sent_length: int,
    duration_s: float,
    volume: MonthlyVolume,
    schedule_span_s: float,
    steady_output_tps: float | None,
) -> dict[str, Any]:
    """One target's cost entry (keys in analysis/summary/run_summary.py's docstring, `cost.targets`)."""
    base: dict[str, Any] = {
        "price": match.entry_name,
        "matched_by": match.matched_by,
        "no_price_reason": match.no_price_reason,
        "billed": _usage_dict(usage),
        "input_tokens_from_sent_length": input_from_sent_length,
    }
    entry = match.entry
    if entry is None:
        return {
            **base,
            "kind": None,
            "as_of": None,
            "example": None,
            "run_cost_usd": None,
            "cost_per_mtok_output_usd": None,
            "cost_per_mtok_total_usd": None,
            "monthly": None,
        }
    if isinstance(entry, TokenPrice):
        kind, run_cost, extra = "tokens", token_cost_usd(usage, entry), {}
    else:
        kind, run_cost = "self_hosted", self_hosted_cost_usd(duration_s, entry)
        extra = {"run_duration_s": duration_s, "usd_per_hour": entry.usd_per_hour}
    factor, reason = monthly_factor(volume, usage, schedule_span_s)
    return {
        **base,
        "kind": kind,
        "as_of": entry.as_of.isoformat(),
        "example": entry.example,
        **extra,
        "run_cost_usd": run_cost,
        "cost_per_mtok_output_usd": cost_per_mtok(run_cost, usage.output_tokens),
        "cost_per_mtok_total_usd": cost_per_mtok(run_cost, usage.total_tokens),
        "monthly": _monthly(match, usage, factor, reason, steady_output_tps),
    }


def cost_summary(
    final_rows: pl.LazyFrame,
    window: metrics.Window,
    book: PriceBook | None,
    target_configs: dict[str, dict[str, Any]],
    steady_output_tps: dict[str, float | None],
    volume: MonthlyVolume = RUN_SPAN,
) -> dict[str, Any]:
    """The `cost` block of a summary: per target run cost, cost per 1M tokens and monthly projection.

    `target_configs` are the targets' public configs (manifest `targets`), by name; a target with no
    config can still be priced through the price file's `targets` map.
    """
    if book is None:
        return {"status": "absent", "reason": "no price file (give --prices FILE)"}
    usages = billed_usage(final_rows, book.billing.failed_requests)
    durations = run_duration_s(final_rows)
    span = window.schedule_end_s - window.schedule_start_s
    targets = {}
    for target in sorted(usages):
        usage, from_sent = usages[target]
        match = book.match(target, target_configs.get(target))
        targets[target] = target_cost(
            match, usage, from_sent, durations.get(target, 0.0), volume, span, steady_output_tps.get(target)
        )
    used = [t for t in targets.values() if t["example"] is not None]
    return {
        "status": "computed",
        "prices_file": book.source,
        "currency": book.currency,
        "billing": {"failed_requests": book.billing.failed_requests},
        "monthly_volume": {
            "basis": volume.basis,
            "per_month": volume.per_month,
            "description": volume.describe(),
            "schedule_span_s": span,
        },
        "example_prices": any(t["example"] for t in used),
        "definitions": DEFINITIONS,
        "targets": targets,
    }
