"""PLAN_DIR/plan.html: a capacity plan as a self-contained page, drawn from plan.json's figures.

- Demand against the fleet: the window rates of the log at the planned volume over the log's time,
  with each target's fleet as a line: where the fleet is simulated, its serving replicas (not the
  spare) x what a full replica serves (slots / mean service time: where the demand crosses it, the
  fleet saturates); else the serving replicas x one replica's SLO capacity / (1 + headroom).
- Predicted latency against replicas, per simulated target: the predicted percentile of each SLO's
  metric for N - 1, N and N + 1 replicas, the SLO's threshold as a line, and with `--verify` the
  replays' measured p95 beside the predicted p95.
- Cost against volume, per target: self-hosted a month (the sizing formula at each volume: a step
  each time the peak passes another replica's capacity) and each API's line, with the planned
  volume and the break-even against the API the verdict compares marked.
- The fleet, the APIs and the verdict with its four conditions, as tables and text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shadowreplay import installed_version
from shadowreplay.analysis.capacity.fleet_plan import FleetPlan, self_hosted_monthly_at
from shadowreplay.analysis.capacity.fleet_simulation import predicted_metric
from shadowreplay.analysis.metrics.slo import parse_slos
from shadowreplay.analysis.report.charts import ColourMap, Panel, Series, Threshold, XMarker, line_chart
from shadowreplay.analysis.report.page import Definitions, Figure, ReportPage, Text
from shadowreplay.analysis.summary.tables import SummaryTable, money, number

PAGE_NAME = "plan.html"
VOLUME_SPAN = (0.05, 20.0)  # the cost chart's volumes, as factors of the planned one
VOLUME_POINTS = 400
API_LINES = 6  # the cheapest APIs drawn (and the one the verdict compares)


def _demand_figure(demand: dict[str, Any], plans: list[FleetPlan], colours: ColourMap) -> Figure:
    times = demand["window_rates"]["t_s"]
    in_hours = bool(times) and times[-1] > 2 * 3600
    x = [t / 3600 if in_hours else t for t in times]
    thresholds = []
    for plan in plans:
        if plan.replicas is None or plan.slo_capacity_rps is None:
            continue
        serving = plan.replicas - plan.spare
        if plan.fleet_model is not None:
            full = plan.fleet_model["capacity_rps"]
            label = f"{plan.target}: {serving} replicas x {full:.3g} req/s (saturated)"
            thresholds.append(Threshold(serving * full, label))
            continue
        limit = serving * plan.slo_capacity_rps / (1 + plan.headroom)
        thresholds.append(Threshold(limit, f"{plan.target}: {serving} replicas x {plan.slo_capacity_rps:.3g} req/s"))
    panel = Panel(
        f"Demand at {demand['volume']} ({demand['window_s']:g} s windows)",
        "requests/s",
        [Series("demand", x, demand["window_rates"]["rps"], colour=colours("demand"))],
        thresholds,
    )
    return Figure(
        "Demand against the fleet",
        line_chart(panel, "time in the log (h)" if in_hours else "time in the log (s)"),
        "The largest window rate of each span of the log, at the planned volume; dashed lines: each target's "
        "serving replicas x what a full simulated replica serves (or, not simulated, x one replica's SLO capacity / "
        "(1 + headroom)).",
    )


def _cost_figure(plan: FleetPlan, colours: ColourMap) -> Figure | None:
    factors = np.geomspace(*VOLUME_SPAN, VOLUME_POINTS)
    tokens = [f * plan.monthly_tokens for f in factors]
    series = []
    own = [self_hosted_monthly_at(plan, float(f)) for f in factors]
    if all(value is not None for value in own):
        series.append(Series("self-hosted", tokens, own, colour=colours("self-hosted")))
    apis = sorted(plan.apis, key=lambda api: api.monthly_usd)[:API_LINES]
    compared = next((api for api in plan.apis if api.name == plan.verdict.compared_api), None)
    if compared is not None and compared not in apis:
        apis.append(compared)
    for api in apis:
        series.append(
            Series(api.name, tokens, [api.monthly_usd * f for f in factors], colour=colours(api.name), dash="dot")
        )
    if not series:
        return None
    markers = [XMarker(plan.monthly_tokens, f"planned {plan.monthly_tokens / 1e6:,.0f}M tokens")]
    if compared is not None and compared.break_even_tokens_per_month:
        markers.append(
            XMarker(
                compared.break_even_tokens_per_month,
                f"break-even against {compared.name}",
                colour="#2f855a",
                side="left",
            )
        )
    values = [v for s in series for v in s.y if v is not None and v > 0]
    panel = Panel(
        f"{plan.target}: monthly cost against monthly volume",
        "USD a month",
        series,
        log_y=bool(values) and max(values) / min(values) > 30,
    )
    return Figure(
        f"{plan.target}: cost against volume",
        line_chart(panel, "tokens a month", log_x=True, markers=markers, hovermode="closest"),
        "Self-hosted: the sizing formula at each volume (a step for each replica more, GPUs x lease x 720 h + "
        "engineering); dotted: the APIs for the same tokens (the cheapest, and the one the verdict compares).",
    )


def _prediction_figure(plan: FleetPlan, checks: list[dict[str, Any]], colours: ColourMap) -> Figure | None:
    """The predicted percentile of each SLO's metric against replicas, with the SLOs and the replays."""
    if not plan.predictions:
        return None
    sizes = [p["replicas"] for p in plan.predictions]
    series, thresholds = [], []
    for slo in parse_slos(plan.slos):
        metric = predicted_metric(slo)
        if metric is None:
            continue
        name = f"{metric.upper()} p{slo.percentile:g}"
        values = [p["percentiles_ms"][metric].get(f"p{slo.percentile:g}") for p in plan.predictions]
        series.append(Series(f"{name} predicted", sizes, values, colour=colours(name), mode="lines+markers"))
        thresholds.append(Threshold(slo.threshold_ms, f"SLO {slo}"))
    mine = sorted((c for c in checks if c["target"] == plan.target), key=lambda c: c["replicas"])
    for metric in ("ttft", "e2e"):
        if mine:
            values = [c["measured_p95_ms"][metric] for c in mine]
            series.append(
                Series(
                    f"{metric.upper()} p95 replayed",
                    [c["replicas"] for c in mine],
                    values,
                    colour=colours(f"{metric.upper()} p95 replayed"),
                    dash="dot",
                    mode="lines+markers",
                )
            )
    if not series:
        return None
    values = [v for s in series for v in s.y if v is not None and v > 0]
    panel = Panel(
        f"{plan.target}: predicted latency against replicas",
        "ms",
        series,
        thresholds,
        log_y=bool(values) and max(values) / min(values) > 30,
    )
    model = plan.fleet_model or {}
    return Figure(
        f"{plan.target}: predicted latency against replicas",
        line_chart(panel, "replicas", hovermode="closest"),
        f"The fleet simulation on the log's arrivals at the planned volume ({model.get('slots')} slots a replica, "
        f"{model.get('mean_service_s', 0) * 1000:,.0f} ms mean service, from the sweep); dashed: each SLO; "
        "dotted: the replays of --verify (measured p95).",
    )


def _fleet_table(plans: list[FleetPlan]) -> SummaryTable:
    columns = ["target", "SLOs", "SLO capacity req/s", "bracket top", "peak req/s", "replicas", "GPUs/replica", "GPUs",
               "autoscaled GPU-h/month", "self-hosted USD/month", "verdict"]  # fmt: skip
    rows = [
        [
            plan.target,
            plan.slos,
            number(plan.slo_capacity_rps, 3),
            number(plan.slo_capacity_bracket_rps[1], 3),
            number(plan.peak_demand_rps, 3),
            "-" if plan.replicas is None else f"{plan.replicas} (spare {plan.spare})",
            str(plan.gpus_per_replica),
            "-" if plan.gpus is None else str(plan.gpus),
            number(plan.autoscaled_gpu_hours_per_month, 0),
            money(plan.monthly_cost_usd),
            plan.verdict.decision,
        ]
        for plan in plans
    ]
    numeric = frozenset(columns[2:10])
    return SummaryTable("The fleet", columns, rows, numeric)


def _api_table(plan: FleetPlan) -> SummaryTable:
    columns = ["API", "USD a month", "break-even tokens a month", "note"]
    rows = [
        [
            api.name,
            money(api.monthly_usd),
            "-" if api.break_even_tokens_per_month is None else f"{api.break_even_tokens_per_month / 1e6:,.1f}M",
            api.break_even_note or ("example price" if api.example else ""),
        ]
        for api in sorted(plan.apis, key=lambda api: api.monthly_usd)
    ]
    return SummaryTable(
        f"{plan.target}: the same {plan.monthly_tokens / 1e6:,.1f}M tokens a month on the APIs",
        columns,
        rows,
        frozenset(columns[1:3]),
    )


def build_plan_page(plan: dict[str, Any]) -> ReportPage:
    """The page of plan.json's object (module docstring)."""
    plans = [FleetPlan.model_validate(entry) for entry in plan["plans"]]
    demand = plan["demand"]
    colours = ColourMap()
    page = ReportPage(
        "shadowreplay capacity plan",
        f"{demand['log']} at {demand['volume']}: mean {demand['mean_rps']:.3g} req/s, peak {demand['peak_rps']:.3g} "
        f"req/s (peak/average {demand['peak_to_average']:.2f}), {demand['monthly_tokens'] / 1e6:,.1f}M tokens a month",
        installed_version(),
    )
    fleet = page.section("The fleet")
    for entry in plans:
        verdict = entry.verdict
        fleet.add(
            Text(
                f"{entry.target}: {verdict.decision.upper()}: {verdict.reason}",
                tone="plain" if verdict.decision == "self-host" else "warning",
            )
        )
        for condition in verdict.conditions:
            status = {True: "met", False: "NOT met", None: "not stated"}[condition.met]
            fleet.add(Text(f"{condition.name}: {status} ({condition.source})"))
        for note in entry.notes:
            fleet.add(Text(note, tone="warning"))
    fleet.add(_fleet_table(plans))
    fleet.add(_demand_figure(demand, plans, colours))
    costs = page.section("Cost against volume")
    for entry in plans:
        figure = _cost_figure(entry, colours)
        if figure is None:
            costs.add(Text(f"{entry.target}: no prices (--prices, --cost-model): no cost to draw.", tone="warning"))
        else:
            costs.add(figure)
        if entry.apis:
            costs.add(_api_table(entry))
    predicted = page.section("Predicted latency against replicas")
    for entry in plans:
        figure = _prediction_figure(entry, plan.get("verify") or [], colours)
        if figure is None:
            predicted.add(Text(f"{entry.target}: not simulated (see its notes): sized by the peak.", tone="warning"))
        else:
            predicted.add(figure)
    page.section("Definitions").add(Definitions("How every figure is computed", plan["definitions"]))
    return page


def write_plan_page(plan: dict[str, Any], plan_dir: Path) -> Path:
    """PLAN_DIR/plan.html."""
    plan_dir.mkdir(parents=True, exist_ok=True)
    return build_plan_page(plan).write(plan_dir / PAGE_NAME)
