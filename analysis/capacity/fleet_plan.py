"""The capacity plan of one target: replicas and GPUs for a demand at the SLOs, what they cost a
month against the APIs, the break-even volume and the verdict of the runbook's decision rule.

Definitions (`DEFINITIONS` carries them into plan.json):
- replicas by the peak = ceil(peak demand x (1 + headroom) / SLO capacity) + spare. The peak is
  analysis/capacity/demand.py's (the largest window rate at the volume); the SLO capacity
  analysis/capacity/replica_capacity.py's (one replica, from its sweep). At the top of the
  capacity's bracket the same formula gives `replicas_at_bracket_high`.
- replicas (where the fleet is simulated, analysis/capacity/fleet_simulation.py): the fewest serving
  replicas whose simulated fleet meets every SLO on the log's own arrivals at the volume, their rate
  x (1 + headroom), searched from the fewest that keep up with the mean load; + spare. Without the
  simulation, the peak's count. GPUs = replicas x GPUs per replica. Predictions: the simulated
  percentiles of replicas - 1, replicas and replicas + 1 at the volume itself.
- The step function (autoscaled bound, break-even, cost against volume) needs the fleet at other
  volumes: replicas there = ceil(peak there x (1 + headroom) / the sizing capacity) + spare, where the
  sizing capacity is the SLO capacity, or with the simulation peak x (1 + headroom) / its serving
  replicas (so it gives the simulated fleet at the plan's volume and scales it in proportion elsewhere;
  a larger fleet pools its bursts better, so this errs towards too many replicas).
- Autoscaled bound: per hour of the log, the same formula on that hour's peak (at least one replica,
  plus the spare); GPU-hours a month = the hours' replicas weighted by the hours' lengths / the log's
  span x 720 h x GPUs per replica: what a fleet that followed the demand hour by hour would lease.
- Self-hosted cost a month = GPUs x lease per GPU-hour x 720 h + engineering a month (a month is 30
  days, as everywhere in shadowreplay). The lease and engineering come from `--cost-model`
  (`h100_monthly_lease` / 720 h, `engineering_overhead_annual` / 12), else from the price book's
  self-hosted entry for the target (`gpu_hour_usd`, `engineering_usd_per_month`).
- API cost a month = the volume's prompt tokens x input price + completion tokens x output price,
  per million, for every token-priced entry of the price book; the cost model's API at its blended
  `cost_per_million_tokens` x all tokens.
- Break-even volume: self-hosting's cost is a step function of the volume (a replica more each time
  the peak passes another replica's capacity), the API's a line. The break-even is the lowest
  volume above which self-hosting costs no more than the API at every larger volume; none where
  the API's cost per replica's worth of traffic is below a replica's lease (the API then stays
  cheaper as volume grows).
- Verdict (the runbook's rule): self-host only if the annual TCO (12 x the monthly cost) is below
  the API's and all four conditions hold: GPU infrastructure allocated, volume above the threshold
  (200M tokens a month unless the cost model says otherwise; computed from the plan's volume),
  frontier capability not required, on-call coverage. `api` where the API is cheaper or a condition
  fails; `undecided` where self-hosting is cheaper but a condition is not stated, or a cost is
  missing. The API compared is the cost model's, else the cheapest priced one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shadowreplay.analysis.capacity.cost_model import CONDITIONS, DEFAULT_VOLUME_THRESHOLD_TOKENS, CostModel
from shadowreplay.analysis.capacity.demand import HOUR_S, Demand
from shadowreplay.analysis.capacity.fleet_simulation import FleetSimulator
from shadowreplay.analysis.capacity.replica_capacity import ReplicaCapacity
from shadowreplay.analysis.cost.prices import HOURS_PER_MONTH, PriceBook, SelfHostedPrice, TokenPrice
from shadowreplay.errors import UserError

MTOK = 1_000_000
MAX_BREAK_EVEN_REPLICAS = 100_000  # the step function is followed this far at most
FEW_CALIBRATION_REQUESTS = 30  # fewer service times than this, and the plan says its percentiles are rough
FEW_SIMULATED_REQUESTS = 200  # fewer simulated requests than this, and the plan says so too

DEFINITIONS = {
    "replicas_by_peak": "ceil(peak demand x (1 + headroom) / SLO capacity) + spare",
    "replicas": "the fewest serving replicas whose simulated fleet meets every SLO on the log's arrivals at the "
    "volume x (1 + headroom), + spare (without a simulation: replicas_by_peak); GPUs = replicas x GPUs per replica",
    "sizing_capacity_rps": "per replica, for the fleet at other volumes: the SLO capacity, or with the simulation "
    "peak x (1 + headroom) / its serving replicas",
    "autoscaled_gpu_hours_per_month": "per hour of the log, replicas for that hour's peak (at least 1, plus the "
    "spare), weighted by the hours' lengths / span x 720 h x GPUs per replica",
    "self_hosted_monthly_usd": "GPUs x lease per GPU-hour x 720 h + engineering a month (a month is 30 days)",
    "api_monthly_usd": "prompt tokens x input price + completion tokens x output price, per million (a blended "
    "price: all tokens x it)",
    "break_even": "the lowest monthly volume above which self-hosting costs no more than the API at every larger "
    "volume (self-hosting a step function of replicas, the API a line); none where the API stays cheaper",
    "verdict": "self-host only if annual TCO is below the API's and all four conditions hold; api where the API is "
    "cheaper or a condition fails; undecided where a condition is not stated or a cost is missing",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiCost(_Model):
    name: str  # a price-book entry (provider/model) or "cost model"
    monthly_usd: float
    source: str
    example: bool = False  # priced from an `example: true` entry
    break_even_tokens_per_month: float | None = None
    break_even_note: str | None = None


class Condition(_Model):
    name: str
    met: bool | None  # None: not stated
    source: str


class Verdict(_Model):
    decision: Literal["self-host", "api", "undecided"]
    reason: str
    compared_api: str | None
    annual_tco_self_hosted_usd: float | None
    annual_tco_api_usd: float | None
    conditions: list[Condition]


class SelfHostedCost(_Model):
    lease_usd_per_gpu_hour: float
    engineering_usd_per_month: float
    source: str
    example: bool = False

    def lease_usd_per_month(self, gpus: float) -> float:
        """`gpus` GPUs leased for a month: GPUs x lease per GPU-hour x 720 h."""
        return gpus * self.lease_usd_per_gpu_hour * HOURS_PER_MONTH

    def monthly_usd(self, gpus: float) -> float:
        """Self-hosted cost a month of `gpus` GPUs: their lease + engineering a month."""
        return self.lease_usd_per_month(gpus) + self.engineering_usd_per_month


class FleetPlan(_Model):
    """One target's plan: the keys of plan.json's `plans` entries (module docstring)."""

    target: str
    sweep: str
    slos: str
    replicas: int | None
    replicas_by_peak: int | None = None
    sizing: Literal["fleet simulation", "peak / SLO capacity"] | None = None
    sizing_capacity_rps: float | None = None
    gpus_per_replica: int
    gpus: int | None
    slo_capacity_rps: float | None
    slo_capacity_bracket_rps: list[float | None]
    replicas_at_bracket_high: int | None
    peak_demand_rps: float
    mean_demand_rps: float
    peak_to_average: float
    headroom: float
    spare: int
    autoscaled_gpu_hours_per_month: float | None
    gpu_hours_per_month: float | None
    monthly_tokens: float
    self_hosted: SelfHostedCost | None
    monthly_cost_usd: float | None
    gpu_count_given: float | None = None  # the cost model's gpu_count_required, where it is a number
    gpu_count_given_suffices: bool | None = None
    apis: list[ApiCost] = Field(default_factory=list)
    verdict: Verdict
    fleet_model: dict[str, Any] | None = None  # the simulated replica (ReplicaService.json_dict)
    predictions: list[dict[str, Any]] = Field(default_factory=list)  # FleetPrediction.json_dict, by replicas
    notes: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class Sizing:
    capacity_rps: float
    headroom: float
    spare: int

    def replicas(self, peak_rps: float, at_least_one: bool = False) -> int:
        serving = math.ceil(peak_rps * (1.0 + self.headroom) / self.capacity_rps - 1e-9) if peak_rps > 0 else 0
        return max(serving, 1 if at_least_one else 0) + self.spare


def self_hosted_monthly_at(plan: FleetPlan, factor: float) -> float | None:
    """The self-hosted cost a month of `plan`'s target at `factor` times the planned volume (the fleet the
    sizing formula gives there; None without an SLO capacity or a lease)."""
    if plan.sizing_capacity_rps is None or plan.self_hosted is None:
        return None
    sizing = Sizing(plan.sizing_capacity_rps, plan.headroom, plan.spare)
    replicas = sizing.replicas(plan.peak_demand_rps * factor, True)
    return plan.self_hosted.monthly_usd(replicas * plan.gpus_per_replica)


def _autoscaled_replica_hours(demand: Demand, sizing: Sizing) -> float:
    """Replica-hours a month for a fleet following the demand's hourly peaks (module docstring)."""
    hours = len(demand.hourly_peak_rps)
    lengths = [HOUR_S] * hours
    if hours and demand.span_s > 0:
        lengths[-1] = max(demand.span_s - HOUR_S * (hours - 1), 0.0) or HOUR_S
    total = sum(lengths)
    weighted = sum(
        sizing.replicas(rate, at_least_one=True) * length
        for rate, length in zip(demand.hourly_peak_rps, lengths, strict=True)
    )
    return weighted / total * HOURS_PER_MONTH if total else math.nan


def _self_hosted_cost(
    target: str, config: dict[str, Any], prices: PriceBook | None, model: CostModel | None
) -> SelfHostedCost | None:
    if model is not None and model.gpu_monthly_lease_usd is not None:
        return SelfHostedCost(
            lease_usd_per_gpu_hour=model.gpu_monthly_lease_usd / HOURS_PER_MONTH,
            engineering_usd_per_month=model.engineering_monthly_usd,
            source=f"{model.source}: self_host_path.h100_monthly_lease / {HOURS_PER_MONTH} h, "
            "engineering_overhead_annual / 12",
        )
    if prices is not None:
        match = prices.match(target, config or None)
        entry = match.entry
        if isinstance(entry, SelfHostedPrice):
            return SelfHostedCost(
                lease_usd_per_gpu_hour=entry.gpu_hour_usd,
                engineering_usd_per_month=entry.engineering_usd_per_month,
                source=f"price book entry {match.entry_name}",
                example=entry.example,
            )
    return None


def _api_costs(demand: Demand, prices: PriceBook | None, model: CostModel | None) -> list[ApiCost]:
    costs: list[ApiCost] = []
    if model is not None and model.api_cost_per_mtok is not None:
        costs.append(
            ApiCost(
                name="cost model",
                monthly_usd=demand.monthly_tokens * model.api_cost_per_mtok / MTOK,
                source=f"{model.source}: api_path.cost_per_million_tokens {model.api_cost_per_mtok:g} x all tokens",
            )
        )
    if prices is not None:
        for provider, entry_provider in prices.providers.items():
            for name, price in entry_provider.models.items():
                costs.append(_token_cost(f"{provider}/{name}", price, demand))
    return costs


def _token_cost(name: str, price: TokenPrice, demand: Demand) -> ApiCost:
    monthly = (
        demand.monthly_prompt_tokens * price.input_per_mtok + demand.monthly_completion_tokens * price.output_per_mtok
    ) / MTOK
    return ApiCost(name=name, monthly_usd=monthly, source=f"price book entry {name}", example=price.example)


def break_even_factor(
    api_monthly_usd: float, sizing: Sizing, peak_rps: float, usd_per_replica_month: float, fixed_usd: float
) -> tuple[float | None, str | None]:
    """The break-even as a factor of the plan's volume (module docstring), and a note where there is none."""
    if api_monthly_usd <= 0 or peak_rps <= 0:
        return None, "the API costs nothing at this volume"
    step = sizing.capacity_rps / (peak_rps * (1.0 + sizing.headroom))  # volume factor one replica serves
    api_slope = api_monthly_usd  # per unit of volume factor
    self_slope = usd_per_replica_month / step
    if api_slope < self_slope:
        return None, (
            f"a replica's worth of traffic costs {api_slope * step:,.0f} USD a month on the API against "
            f"{usd_per_replica_month:,.0f} USD of lease: the API stays cheaper as volume grows"
        )
    break_even = 0.0
    for serving in range(1, MAX_BREAK_EVEN_REPLICAS + 1):
        low, high = (serving - 1) * step, serving * step
        cost = (serving + sizing.spare) * usd_per_replica_month + fixed_usd  # self-hosted, over this step
        crossing = cost / api_slope  # where the API's line reaches it
        if crossing <= low:
            # Self-hosting is cheaper over this whole step, and so over every later one: each step adds one
            # replica's lease and the API's line rises by at least as much over it (api_slope >= self_slope).
            return break_even, None
        break_even = min(crossing, high)  # the API is cheaper from `low` up to here
    return None, f"beyond {MAX_BREAK_EVEN_REPLICAS:,} replicas"


def _conditions(demand: Demand, model: CostModel | None) -> list[Condition]:
    threshold = model.volume_threshold_tokens if model is not None else DEFAULT_VOLUME_THRESHOLD_TOKENS
    threshold_from = (
        f"{model.source}: decision_threshold"
        if model is not None and threshold != DEFAULT_VOLUME_THRESHOLD_TOKENS
        else "the default"
    )
    conditions = []
    for name in CONDITIONS:
        if name == "volume_above_threshold":
            met = demand.monthly_tokens >= threshold
            source = (
                f"computed: {demand.monthly_tokens / 1e6:,.1f}M tokens a month at volume {demand.volume} against "
                f"{threshold / 1e6:,.0f}M ({threshold_from})"
            )
            conditions.append(Condition(name=name, met=met, source=source))
            continue
        stated = model.conditions.get(name) if model is not None else None
        if model is not None and name in model.conditions:
            source = f"{model.source}: decision_threshold.conditions" + (
                "" if stated is not None else " (auto: not stated)"
            )
        else:
            source = "not stated: set it in --cost-model decision_threshold.conditions"
        conditions.append(Condition(name=name, met=stated, source=source))
    return conditions


def _verdict(
    monthly_self: float | None, apis: list[ApiCost], conditions: list[Condition], model: CostModel | None
) -> Verdict:
    compared = next((api for api in apis if api.name == "cost model"), None) if model is not None else None
    if compared is None and apis:
        compared = min(apis, key=lambda api: api.monthly_usd)
    tco_self = monthly_self * 12 if monthly_self is not None else None
    tco_api = compared.monthly_usd * 12 if compared is not None else None
    failed = [c.name for c in conditions if c.met is False]
    unknown = [c.name for c in conditions if c.met is None]
    if tco_self is None or tco_api is None:
        missing = "the self-hosted lease" if tco_self is None else "an API price"
        decision: Literal["self-host", "api", "undecided"] = "undecided"
        reason = f"no cost comparison: {missing} is not given (--prices, --cost-model)"
        if failed:
            decision, reason = "api", f"condition(s) not met: {', '.join(failed)}"
    elif tco_self >= tco_api:
        decision, reason = (
            "api",
            f"annual TCO self-hosted {tco_self:,.0f} USD is not below the API's {tco_api:,.0f} USD",
        )
    elif failed:
        decision, reason = "api", f"self-hosting is cheaper, but condition(s) not met: {', '.join(failed)}"
    elif unknown:
        decision, reason = "undecided", f"self-hosting is cheaper; not stated: {', '.join(unknown)}"
    else:
        decision, reason = (
            "self-host",
            f"annual TCO {tco_self:,.0f} USD below the API's {tco_api:,.0f} USD, all four conditions hold",
        )
    return Verdict(
        decision=decision,
        reason=reason,
        compared_api=compared.name if compared is not None else None,
        annual_tco_self_hosted_usd=tco_self,
        annual_tco_api_usd=tco_api,
        conditions=conditions,
    )


def plan_fleet(
    capacity: ReplicaCapacity,
    demand: Demand,
    headroom: float = 0.0,
    spare: int = 0,
    prices: PriceBook | None = None,
    model: CostModel | None = None,
    simulator: FleetSimulator | None = None,
) -> FleetPlan:
    """The plan of `capacity`'s target for `demand` (module docstring); `simulator`: its fleet on the demand's
    arrivals, which then decides the replicas."""
    gpus_per_replica = capacity.gpus_per_replica or 1
    notes: list[str] = []
    if capacity.shape == "poisson":
        notes.append(
            f"the SLO capacity is for Poisson arrivals: bursts shorter than the {demand.window_s:g} s demand window "
            "are in neither it nor the peak (sweep with --shape trace to measure them)"
        )
    if capacity.clamped_requests:
        bounds = ", ".join(f"{name} {value}" for name, value in capacity.length_bounds.items() if value is not None)
        notes.append(
            f"the sweep cut {capacity.clamped_requests:,} of its requests' lengths ({bounds}): its SLO capacity is "
            "for shorter requests than the log's, so the replicas are too few for the log's own lengths"
        )
    if capacity.gpus_per_replica is None:
        notes.append("GPUs per replica not recorded in the sweep's target: taken as 1 (give --gpus-per-replica)")
    self_hosted = _self_hosted_cost(capacity.target, capacity.target_config, prices, model)
    apis = _api_costs(demand, prices, model)
    conditions = _conditions(demand, model)
    bracket = [capacity.slo_capacity_rps, capacity.bracket_high_rps]
    if capacity.slo_capacity_rps is None:
        notes.append(f"no SLO capacity: no point of {capacity.sweep} met {capacity.slos} without saturating")
        return FleetPlan(
            target=capacity.target, sweep=capacity.sweep, slos=capacity.slos, replicas=None,
            gpus_per_replica=gpus_per_replica, gpus=None, slo_capacity_rps=None, slo_capacity_bracket_rps=bracket,
            replicas_at_bracket_high=None, peak_demand_rps=demand.peak_rps, mean_demand_rps=demand.mean_rps,
            peak_to_average=demand.peak_to_average, headroom=headroom, spare=spare,
            autoscaled_gpu_hours_per_month=None, gpu_hours_per_month=None, monthly_tokens=demand.monthly_tokens,
            self_hosted=self_hosted, monthly_cost_usd=None, apis=apis,
            verdict=_verdict(None, apis, conditions, model), notes=notes,
        )  # fmt: skip
    sizing = Sizing(capacity.slo_capacity_rps, headroom, spare)
    by_peak = sizing.replicas(demand.peak_rps, at_least_one=True)
    replicas = by_peak
    predictions: list[dict[str, Any]] = []
    serving = None
    if simulator is not None:
        serving, notes_made = _simulated_fleet(simulator, headroom)
        notes.extend(notes_made)
    if simulator is not None and serving is not None:
        replicas = serving + spare
        sizing = Sizing(demand.peak_rps * (1.0 + headroom) / serving, headroom, spare)
        predictions = [
            simulator.predict(size).json_dict() for size in (replicas - 1, replicas, replicas + 1) if size >= 1
        ]
        simulated = len(simulator.arrivals_s)
        if simulated < FEW_SIMULATED_REQUESTS:
            notes.append(
                f"the fleet is simulated on {simulated} requests (the log at the volume): a percentile of so few "
                "rests on a handful of them; plan on a longer log"
            )
    else:
        simulator = None  # sized by the peak alone (a note says why)
    high = None
    if capacity.bracket_high_rps is not None:
        high = Sizing(capacity.bracket_high_rps, headroom, spare).replicas(demand.peak_rps, at_least_one=True)
    gpus = replicas * gpus_per_replica
    given = model.gpu_count_required if model is not None else None
    billed_gpus = given if given is not None else gpus
    if given is not None:
        notes.append(
            f"the cost model's gpu_count_required {given:g} is used as given; the sweep derives {gpus} "
            f"({'enough' if given >= gpus else 'too few'})"
        )
    monthly_self = None
    if self_hosted is not None:
        monthly_self = self_hosted.monthly_usd(billed_gpus)
        per_replica = self_hosted.lease_usd_per_month(gpus_per_replica)
        for api in apis:
            factor, note = break_even_factor(
                api.monthly_usd, sizing, demand.peak_rps, per_replica, self_hosted.engineering_usd_per_month
            )
            api.break_even_tokens_per_month = factor * demand.monthly_tokens if factor is not None else None
            api.break_even_note = note
    autoscaled = _autoscaled_replica_hours(demand, sizing) * gpus_per_replica
    return FleetPlan(
        target=capacity.target,
        sweep=capacity.sweep,
        slos=capacity.slos,
        replicas=replicas,
        gpus_per_replica=gpus_per_replica,
        gpus=gpus,
        replicas_by_peak=by_peak,
        sizing="fleet simulation" if simulator is not None else "peak / SLO capacity",
        sizing_capacity_rps=sizing.capacity_rps,
        slo_capacity_rps=capacity.slo_capacity_rps,
        slo_capacity_bracket_rps=bracket,
        replicas_at_bracket_high=high,
        peak_demand_rps=demand.peak_rps,
        mean_demand_rps=demand.mean_rps,
        peak_to_average=demand.peak_to_average,
        headroom=headroom,
        spare=spare,
        autoscaled_gpu_hours_per_month=autoscaled,
        gpu_hours_per_month=gpus * HOURS_PER_MONTH,
        monthly_tokens=demand.monthly_tokens,
        self_hosted=self_hosted,
        monthly_cost_usd=monthly_self,
        gpu_count_given=given,
        gpu_count_given_suffices=(given >= gpus) if given is not None else None,
        apis=apis,
        verdict=_verdict(monthly_self, apis, conditions, model),
        fleet_model=simulator.service.json_dict() if simulator is not None else None,
        predictions=predictions,
        notes=notes,
    )


def _simulated_fleet(simulator: FleetSimulator, headroom: float) -> tuple[int | None, list[str]]:
    """The fewest serving replicas the simulation finds meeting the SLOs at the rate x (1 + headroom) (None
    where it finds none: the plan is then sized by the peak), and notes on what it could not judge."""
    notes = []
    service = simulator.service
    if not service.saturated:
        notes.append(
            f"no point of {service.sweep} saturated: the simulated replica's {service.slots} slots are a lower bound "
            "(its fleet errs towards too many replicas)"
        )
    if len(service.e2e_s) < FEW_CALIBRATION_REQUESTS:
        notes.append(
            f"the simulated replica is calibrated from only {len(service.e2e_s)} requests of {service.sweep} that did "
            "not queue: its percentiles are rough (longer sweep points give more)"
        )
    if simulator.unpredicted:
        notes.append(f"the fleet simulation does not predict {', '.join(simulator.unpredicted)}: not judged by it")
    try:  # from the fewest that keep up with the mean load (probes below the answer stop early)
        return simulator.smallest_fleet(rate_factor=1.0 + headroom), notes
    except UserError as exc:
        return None, [*notes, f"the fleet simulation finds no fleet: {exc}; sized by the peak alone"]
