"""scripts/bench_capacity.py: its synthetic sweep is one `capacity` reads (the contract's curve and
summary), and its plain polars baseline computes the same peak demand as the verb."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shadowreplay.cli import main
from tests.support.paths import SCRIPTS

sys.path.insert(0, str(SCRIPTS))

from bench_capacity import BASELINE, SERVICE_S, SIM_LEVELS, SIM_SLO, WINDOW_S, make_sweep  # noqa: E402
from bench_startup import make_log  # noqa: E402


def test_the_bench_sweep_plans_and_its_baseline_agrees(tmp_path, capsys):
    log, sweep = tmp_path / "log.parquet", tmp_path / "sweep"
    make_log(log, 20_000)
    make_sweep(sweep)
    assert main(["capacity", "--sweep", str(sweep), "--log", str(log), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["plans"][0]
    assert plan["slo_capacity_rps"] == 4.0 and plan["replicas"] >= 1
    done = subprocess.run(
        [sys.executable, "-c", BASELINE, str(log), str(WINDOW_S)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert json.loads(done.stdout)["peak_rps"] == pytest.approx(plan["peak_demand_rps"])


def test_the_bench_simulation_sweep_calibrates_a_replica_and_sizes_its_fleet(tmp_path, capsys):
    log, sweep = tmp_path / "log.parquet", tmp_path / "sim-sweep"
    make_log(log, 20_000)
    make_sweep(sweep, SIM_LEVELS, SIM_SLO, saturation_rps=1.0 / SERVICE_S, rows=True)
    assert main(["capacity", "--sweep", str(sweep), "--log", str(log), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["plans"][0]
    model = plan["fleet_model"]
    assert model["slots"] == 1 and model["mean_service_s"] == pytest.approx(SERVICE_S)
    assert plan["sizing"] == "fleet simulation"
    assert plan["mean_demand_rps"] * SERVICE_S <= plan["replicas"] <= 1.5 * plan["mean_demand_rps"] * SERVICE_S
    by_size = {p["replicas"]: p["meets_slos"] for p in plan["predictions"]}
    assert by_size == {plan["replicas"] - 1: False, plan["replicas"]: True, plan["replicas"] + 1: True}
