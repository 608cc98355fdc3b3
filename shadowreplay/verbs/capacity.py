"""`shadowreplay capacity`: how many replicas and GPUs a target needs for a volume at the SLOs, what
that costs a month against the APIs, the break-even volume and the verdict (analysis/capacity/)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from shadowreplay.errors import UserError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "capacity",
        help="size a fleet from sweeps and a traffic log: replicas, GPUs, cost against the APIs, the verdict",
        description=(
            "From each sweep (one per target; --shape poisson or trace) its replica's SLO capacity under --slo, "
            "and from LOG the demand at --volume: the log's arrivals as rates over --window (default: short enough "
            "for the SLO to notice a 10% overload), peak and peak-to-average. "
            "Each target's fleet is simulated on the log's own arrivals at the volume (each replica calibrated from "
            "its sweep): replicas = the fewest that meet every SLO at the rate x (1 + headroom), + spare (also shown: "
            "ceil(peak x (1 + headroom) / capacity) + spare), GPUs = replicas x gpus_per_replica, with the predicted "
            "percentiles of N - 1, N and N + 1; "
            "the autoscaled bound (hour by hour); the monthly cost self-hosted (--cost-model or the --prices "
            "self-hosted entry) beside every priced API; the break-even volume; and the runbook's verdict with "
            "its four conditions and where each came from."
        ),
    )
    parser.add_argument(
        "--sweep", action="append", required=True, type=Path, metavar="SWEEP_DIR", help="a sweep (repeat per target)"
    )
    parser.add_argument(
        "--log", required=True, type=Path, metavar="LOG.parquet", help="the traffic log whose demand is planned for"
    )
    parser.add_argument(
        "--slo",
        action="append",
        default=[],
        metavar="SPEC",
        help="e.g. ttft_p95=500ms,tpot_p95=50ms (default: each sweep's own)",
    )
    parser.add_argument(
        "--volume",
        metavar="V",
        help="the volume to plan for: 2x, 120rps, 300M-tokens/month, 40M-output-tokens/month (default: the log's own, "
        "or the cost model's api_path.monthly_tokens)",
    )
    parser.add_argument(
        "--window",
        metavar="D",
        help="demand window (e.g. 5s, 1m; default: the tightest TTFT or e2e SLO threshold / 0.1, the time a 10%% "
        "overload takes to add that wait, within 1 s and the sweep's point length)",
    )
    parser.add_argument(
        "--headroom",
        type=float,
        default=0.0,
        metavar="H",
        help="capacity kept free at the peak (0.15: 15%%; default 0)",
    )
    parser.add_argument(
        "--spare",
        type=int,
        default=0,
        metavar="N",
        help="replicas beyond the need (1: survive one failed replica; default 0)",
    )
    parser.add_argument(
        "--gpus-per-replica",
        type=int,
        metavar="G",
        help="GPUs one replica uses (default: as the sweep's target records it)",
    )
    parser.add_argument(
        "--prices",
        type=Path,
        metavar="PRICES.yaml",
        help="price book (configs/prices.yaml): APIs and self-hosted leases",
    )
    parser.add_argument(
        "--cost-model", type=Path, metavar="FILE", help="the runbook's cost model (configs/cost_model.example.yaml)"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="replay LOG at the volume against N-1, N and N+1 replicas of each --target (needs -o): measured "
        "percentiles and SLOs beside the simulation's",
    )
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        type=Path,
        metavar="T.yaml",
        help="with --verify: the target of a sweep (its name), with endpoints: (one URL per replica) or kind vllm",
    )
    parser.add_argument(
        "--verify-duration", metavar="D", help="with --verify: replay only the first D of the log (e.g. 10m)"
    )
    parser.add_argument("--json", action="store_true", help="print plan.json's object instead of the table")
    parser.add_argument(
        "-o", "--output", type=Path, metavar="PLAN_DIR", help="write PLAN_DIR/plan.json and PLAN_DIR/plan.html"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shadowreplay.analysis.capacity.cost_model import load_cost_model
    from shadowreplay.analysis.capacity.demand import default_window_s
    from shadowreplay.analysis.capacity.demand import demand as demand_of
    from shadowreplay.analysis.capacity.plan_file import capacity_plan, print_plans, print_verify, write_plan
    from shadowreplay.analysis.capacity.replica_capacity import replica_capacity
    from shadowreplay.analysis.capacity.traffic_volume import TrafficVolume
    from shadowreplay.analysis.cost.prices import load_prices
    from shadowreplay.analysis.metrics.slo import parse_slos
    from shadowreplay.loadgen.volume import arrivals_at_volume
    from shadowreplay.replay.run.plan import parse_duration_s

    if args.verify and (not args.target or not args.output):
        raise UserError("--verify needs --target T.yaml (each sweep's target) and -o PLAN_DIR (for its replays)")
    if args.target and not args.verify:
        raise UserError("--target is for --verify")
    if args.headroom < 0 or args.spare < 0:
        raise UserError("--headroom and --spare must be zero or more")
    if args.gpus_per_replica is not None and args.gpus_per_replica < 1:
        raise UserError("--gpus-per-replica must be at least 1")
    model = load_cost_model(args.cost_model) if args.cost_model else None
    prices = load_prices(args.prices) if args.prices else None
    volume = TrafficVolume.parse(args.volume) if args.volume else None
    if volume is None and model is not None and model.api_monthly_tokens is not None:
        volume = TrafficVolume(model.api_monthly_tokens, "tokens/month", f"{model.api_monthly_tokens:g}-tokens/month")
    slos = tuple(s for spec in args.slo for s in parse_slos(spec)) or None  # None: each sweep's own
    capacities = [replica_capacity(sweep, slos, args.gpus_per_replica) for sweep in args.sweep]
    if args.window:
        window_s = parse_duration_s(args.window, "--window")
    else:  # the tightest of the sweeps' (analysis/capacity/demand.py default_window_s)
        window_s = min(default_window_s(parse_slos(c.slos), c.point_s) for c in capacities)
    demand = demand_of(args.log, window_s, volume)
    plan = capacity_plan(  # the fleet simulation is fed the log's arrivals at the volume
        capacities,
        demand,
        args.headroom,
        args.spare,
        prices,
        model,
        lambda: arrivals_at_volume(args.log, demand.factor),
    )
    if args.verify:
        from shadowreplay.loadgen.capacity_verify import VerifyRequest, verify_plan

        request = VerifyRequest(args.log, args.target, args.output, volume, args.verify_duration)
        # with --json, stdout is the plan alone: the replays' lines go to stderr
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            verify_plan(plan, request)
    if args.output:
        from shadowreplay.analysis.capacity.plan_page import write_plan_page  # plotly and jinja2 only for the page

        path = write_plan(plan, args.output)
        page = write_plan_page(plan, args.output)
    if args.json:
        print(json.dumps(plan, indent=2))
    else:
        from rich.console import Console

        console = Console() if Console().is_terminal else Console(width=140)
        print_plans(plan, console)
        if plan.get("verify"):
            print_verify(plan, console)
        if args.output:
            console.print(f"plan: {path}; page: {page}", highlight=False)
    return 0
