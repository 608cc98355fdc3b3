"""plan.json (docs/DESIGN.md "Capacity plan"): every target's FleetPlan beside the demand they share,
and the same plan as console tables."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shadowreplay.analysis.capacity import demand as demand_module
from shadowreplay.analysis.capacity import fleet_plan, fleet_simulation, replica_capacity
from shadowreplay.analysis.capacity.cost_model import CostModel
from shadowreplay.analysis.capacity.demand import Demand
from shadowreplay.analysis.capacity.fleet_plan import FleetPlan, plan_fleet
from shadowreplay.analysis.capacity.fleet_simulation import FleetSimulator, ReplicaService
from shadowreplay.analysis.capacity.replica_capacity import ReplicaCapacity
from shadowreplay.analysis.cost.prices import PriceBook
from shadowreplay.analysis.metrics.slo import parse_slos
from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.schemas.run_dir import write_text_atomically

if TYPE_CHECKING:
    from rich.console import Console

PLAN_KIND = "shadowreplay.capacity_plan"
PLAN_VERSION = 1
PLAN_NAME = "plan.json"


def capacity_plan(
    capacities: Sequence[ReplicaCapacity],
    demand: Demand,
    headroom: float,
    spare: int,
    prices: PriceBook | None,
    model: CostModel | None,
    arrivals_s: Callable[[], np.ndarray] | None = None,
) -> dict[str, Any]:
    """plan.json's object: the demand, one plan per target (with its sweep's capacity), the definitions.
    `arrivals_s` gives the log's arrivals at the demand's volume (s from the first; read once, when a
    fleet is first simulated), on which each target's fleet is simulated
    (analysis/capacity/fleet_simulation.py); None: sized by the peak alone."""
    plans: list[FleetPlan] = []
    arrivals: np.ndarray | None = None
    for capacity in capacities:
        simulator = None
        unsimulated = None
        if arrivals_s is not None and capacity.slo_capacity_rps is not None:
            try:
                service = ReplicaService.from_sweep(capacity.sweep)
            except ShadowReplayError as exc:  # e.g. a sweep whose points' rows are gone: sized by the peak alone
                unsimulated = f"the fleet is not simulated: {exc}"
            else:
                arrivals = arrivals_s() if arrivals is None else arrivals
                simulator = FleetSimulator(service, arrivals, parse_slos(capacity.slos))
        plan = plan_fleet(capacity, demand, headroom, spare, prices, model, simulator)
        if unsimulated:
            plan.notes.append(unsimulated)
        plans.append(plan)
    return {
        "kind": PLAN_KIND,
        "schema_version": PLAN_VERSION,
        "demand": demand.json_dict(),
        "capacities": [c.json_dict() for c in capacities],
        "plans": [plan.model_dump(mode="json") for plan in plans],
        "cost_model": model.source if model is not None else None,
        "definitions": {
            **demand_module.DEFINITIONS,
            **replica_capacity.DEFINITIONS,
            **fleet_plan.DEFINITIONS,
            **fleet_simulation.DEFINITIONS,
        },
    }


def write_plan(plan: dict[str, Any], plan_dir: Path) -> Path:
    """PLAN_DIR/plan.json, written atomically."""
    plan_dir.mkdir(parents=True, exist_ok=True)
    path = plan_dir / PLAN_NAME
    write_text_atomically(path, json.dumps(plan, indent=2) + "\n")
    return path


def _usd(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _tokens(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:,.1f}M"


def print_plans(plan: dict[str, Any], console: Console) -> None:
    """The plan as tables: the demand, each target's fleet, its costs against the APIs, its verdict."""
    from rich.table import Table  # only where the plan is printed as tables

    demand = plan["demand"]
    console.print(
        f"demand: {demand['log']} at {demand['volume']} (x{demand['factor']:.3g}): "
        f"mean {demand['mean_rps']:.3g} req/s, "
        f"peak {demand['peak_rps']:.3g} req/s over {demand['window_s']:g} s windows (peak/average "
        f"{demand['peak_to_average']:.2f}), {_tokens(demand['monthly_tokens'])} tokens a month",
        highlight=False,
        soft_wrap=True,
    )
    for entry in plan["plans"]:
        fleet = Table(title=f"Capacity plan: {entry['target']} at {entry['slos']}")
        for column in ("SLO capacity req/s", "peak req/s", "headroom", "spare", "replicas", "GPUs/replica", "GPUs",
                       "GPU-h/month", "autoscaled GPU-h/month", "self-hosted USD/month"):  # fmt: skip
            fleet.add_column(column, justify="right")
        low, high = entry["slo_capacity_bracket_rps"]
        capacity = "-" if low is None else f"{low:.3g}" + (f" (< {high:.3g})" if high is not None else "")
        replicas = "-" if entry["replicas"] is None else str(entry["replicas"])
        if entry["sizing"] == "fleet simulation":
            replicas += f" (simulated; {entry['replicas_by_peak']} by the peak)"
        elif entry["replicas_at_bracket_high"] not in (None, entry["replicas"]):
            replicas += f" ({entry['replicas_at_bracket_high']} at the bracket's top)"
        fleet.add_row(
            capacity,
            f"{entry['peak_demand_rps']:.3g}",
            f"{entry['headroom']:.0%}",
            str(entry["spare"]),
            replicas,
            str(entry["gpus_per_replica"]),
            "-" if entry["gpus"] is None else str(entry["gpus"]),
            _usd(entry["gpu_hours_per_month"]),
            _usd(entry["autoscaled_gpu_hours_per_month"]),
            _usd(entry["monthly_cost_usd"]),
        )
        console.print(fleet)
        if entry["predictions"]:
            print_predictions(entry, console)
        if entry["apis"]:
            apis = Table(title=f"The same {_tokens(entry['monthly_tokens'])} tokens a month on the APIs")
            for column in ("API", "USD/month", "break-even tokens/month", "note"):
                apis.add_column(column, justify="left" if column in ("API", "note") else "right")
            for api in sorted(entry["apis"], key=lambda a: a["monthly_usd"]):
                note = api["break_even_note"] or ("example price" if api["example"] else "")
                apis.add_row(api["name"], _usd(api["monthly_usd"]), _tokens(api["break_even_tokens_per_month"]), note)
            console.print(apis)
        verdict = entry["verdict"]
        console.print(f"verdict: {verdict['decision'].upper()}: {verdict['reason']}", highlight=False, soft_wrap=True)
        for condition in verdict["conditions"]:
            status = {True: "met", False: "NOT met", None: "not stated"}[condition["met"]]
            console.print(f"  {condition['name']}: {status} ({condition['source']})", highlight=False, soft_wrap=True)
        for note in entry["notes"]:
            console.print(f"  note: {note}", highlight=False, soft_wrap=True)


def print_predictions(entry: dict[str, Any], console: Console) -> None:
    """The simulated fleet's percentiles for replicas - 1, replicas and replicas + 1."""
    from rich.table import Table

    model = entry["fleet_model"]
    table = Table(
        title=f"Fleet simulation ({model['slots']} slot{'s' if model['slots'] != 1 else ''} a replica, "
        f"{model['mean_service_s'] * 1000:,.0f} ms mean service, from {model['calibration_requests']} requests of "
        f"{model['calibration_points']} sweep point{'s' if model['calibration_points'] != 1 else ''})"
    )
    for column in ("replicas", "TTFT p50 ms", "TTFT p95 ms", "TPOT p95 ms", "e2e p95 ms", "queued", "meets SLOs"):
        table.add_column(column, justify="right")
    for prediction in entry["predictions"]:
        ms = prediction["percentiles_ms"]
        table.add_row(
            str(prediction["replicas"]),
            _ms(ms["ttft"]["p50"]),
            _ms(ms["ttft"]["p95"]),
            _ms(ms["tpot"]["p95"]),
            _ms(ms["e2e"]["p95"]),
            f"{prediction['queued_fraction']:.1%}",
            "yes" if prediction["meets_slos"] else "NO",
        )
    console.print(table)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def print_verify(plan: dict[str, Any], console: Console) -> None:
    """`--verify`'s replays: measured p95 and SLOs beside the simulation's, with its error."""
    from rich.table import Table

    table = Table(title="Verified by replay (p95 ms: measured / predicted, error)")
    for column in ("target", "replicas", "requests", "errors", "TTFT", "TPOT", "e2e", "meets SLOs (replay / model)"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for check in plan["verify"]:
        cells = []
        for metric in ("ttft", "tpot", "e2e"):
            measured, predicted, error = (
                check["measured_p95_ms"][metric],
                check["predicted_p95_ms"][metric],
                check["error"][metric],
            )
            cells.append(f"{_ms(measured)} / {_ms(predicted)}" + (f" ({error:+.0%})" if error is not None else ""))
        met = {True: "yes", False: "NO", None: "-"}
        table.add_row(
            check["target"],
            f"{check['replicas']}" + (" (plan)" if check["planned"] else ""),
            str(check["requests"]),
            f"{check['error_rate']:.1%}" if check["error_rate"] is not None else "-",
            *cells,
            f"{met[check['slos_met']]} / {met[check['predicted_slos_met']]}",
        )
    console.print(table)
    for warning in sorted({check["warning"] for check in plan["verify"] if check.get("warning")}):
        console.print(f"  WARNING: {warning}", highlight=False, soft_wrap=True)
