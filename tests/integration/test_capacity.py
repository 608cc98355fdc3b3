"""`shadowreplay capacity` through the verb, on a real sweep of a FIFO server of known capacity
(tests/support/fifo_model.py, 6 requests/s, noiseless; the sweep itself is real: LoadSweep, its
saturation rule and bisection, its run directories): every figure of the plan is recomputed here from
its inputs (the log's arrivals with numpy, the sweep's summary, the cost model and price book files),
the break-even is checked against the cost functions themselves, and the verdict follows the rule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

import shadowreplay.loadgen.sweep as load_sweep
import shadowreplay.replay.run.runner as runner
from shadowreplay.cli import main
from shadowreplay.loadgen.volume import arrivals_at_volume
from tests.support.chromium import chromium_dom, plotly_drawing
from tests.support.faulty_server import FaultyServer
from tests.support.fifo_model import FifoServerModel
from tests.support.fleet_reference import plain_fleet
from tests.support.paths import REPO
from tests.support.server_thread import ServerThread
from tests.support.traffic_logs import arrivals_log, bursty_offsets

FIFO = FifoServerModel(server_rps=6.0, first_token_ms=15.0, output_tokens=8, timeout_s=3.0)
SLO = "ttft_p95=300ms"
REQUESTS = 480
COST_MODEL = REPO / "configs" / "cost_model.example.yaml"
PRICES = REPO / "configs" / "prices.yaml"
MONTH_S = 30 * 24 * 3600


@pytest.fixture
def swept(tmp_path, monkeypatch, capsys) -> tuple[Path, Path, np.ndarray]:
    """A trace sweep of the bursty log against the FIFO model (a target of 2 GPUs a replica)."""
    monkeypatch.setattr(load_sweep, "run_plan", FIFO.run_plan)
    monkeypatch.setattr(runner, "start_ray", lambda address, cpus=None: {})
    offsets = bursty_offsets(REQUESTS)
    log = arrivals_log(tmp_path / "bursty.parquet", offsets)
    target = tmp_path / "target.yaml"
    sweep_dir = tmp_path / "sweep"
    argv = ["sweep", str(log), "--target", str(target), "--shape", "trace", "--from", "0.5", "--to", "8"]
    argv += ["--points", "5", "--duration", "40s", "--slo", SLO, "--bisect-steps", "3", "-o", str(sweep_dir)]
    with ServerThread(FaultyServer()) as server:  # listens for the Session's endpoint check; the model serves
        target.write_text(
            f"name: modelled\nkind: openai\nbase_url: {server.base_url}\nmodel: m\napi: completions\n"
            "gpus_per_replica: 2\n"
        )
        assert main(argv) == 0
    capsys.readouterr()
    return sweep_dir, log, offsets


def _plan(capsys, *argv: str) -> dict:
    assert main(["capacity", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _window_peak(offsets: np.ndarray, window_s: float, steps: int = 10) -> float:
    """The largest count in windows of window_s sliding by window_s / steps from the first arrival, / window_s."""
    sub = window_s / steps
    counts = np.bincount(((offsets - offsets[0]) // sub).astype(int))
    return max(counts[i : i + steps].sum() for i in range(len(counts) - steps + 1)) / window_s


def test_the_plan_is_its_inputs_recomputed(swept, capsys, tmp_path):
    sweep_dir, log, offsets = swept
    sweep = json.loads((sweep_dir / "summary.json").read_text())
    argv = ["--sweep", str(sweep_dir), "--log", str(log), "--volume", "3x", "--headroom", "0.15", "--spare", "1"]
    argv += ["--prices", str(PRICES), "--cost-model", str(COST_MODEL), "-o", str(tmp_path / "plan")]
    plan = _plan(capsys, *argv)
    assert json.loads((tmp_path / "plan" / "plan.json").read_text()) == plan
    page = tmp_path / "plan" / "plan.html"  # drawn from plan.json's figures, renders with no network
    dom, _ = chromium_dom(page, tmp_path / "profile")
    rendered = plotly_drawing(dom)
    # demand against the fleet; cost against volume; predicted latency against replicas
    assert len(rendered.figure_classes) == 3, rendered.figure_classes
    assert "SLO ttft_p95=300ms" in rendered.svg_texts and "TTFT p95 predicted" in rendered.svg_texts
    assert all("js-plotly-plot" in classes for classes in rendered.figure_classes.values())
    assert "break-even against cost model" not in rendered.svg_texts  # no break-even here (the API stays cheaper)
    assert any(text.startswith("modelled: ") and "replicas x" in text for text in rendered.svg_texts)
    (entry,) = plan["plans"]
    capacity = sweep["slo_capacity_rps"]
    assert entry["target"] == "modelled" and entry["slo_capacity_rps"] == pytest.approx(capacity)
    assert 3.0 < capacity < 5.0  # the bursty log's capacity on a 6 req/s server (its peaks run at 1.6x)

    demand = plan["demand"]
    assert demand["window_s"] == pytest.approx(3.0)  # TTFT p95 300 ms / 10%: what a 10% overload takes to add 300 ms
    mean = 3 * (REQUESTS - 1) / (offsets[-1] - offsets[0])
    peak = max(3 * _window_peak(offsets, 3.0), mean)
    assert peak > 1.5 * mean  # the bursts at 1.6x the mean show in 3 s windows
    assert demand["peak_rps"] == pytest.approx(peak) and demand["mean_rps"] == pytest.approx(mean)
    assert entry["peak_demand_rps"] == pytest.approx(peak)
    assert entry["replicas_by_peak"] == math.ceil(peak * 1.15 / capacity) + 1

    # The fleet simulation, calibrated from the sweep's rows: the FIFO server is 1 slot of 1/6 s, TTFT 15 ms.
    fleet_model = entry["fleet_model"]
    assert fleet_model["slots"] == 1 and fleet_model["mean_service_s"] == pytest.approx(1 / 6)
    assert fleet_model["service_ttft_p50_ms"] == pytest.approx(15.0)
    # Its answer, recomputed by the plain request-by-request simulation on the arrivals at 3x, their rate
    # 1.15x (the headroom): the fewest serving replicas whose TTFT p95 is within 300 ms; + the spare.
    arrivals = arrivals_at_volume(log, 3.0) / 1.15

    def ttft_p95_ms(replicas: int) -> float:
        waits = plain_fleet(arrivals, np.full(len(arrivals), 1 / 6), replicas, 1)
        return float(np.percentile(waits + 0.015, 95) * 1000)

    serving = next(n for n in range(1, 50) if ttft_p95_ms(n) <= 300.0)
    replicas = serving + 1
    assert entry["sizing"] == "fleet simulation"
    assert entry["replicas"] == replicas and entry["gpus_per_replica"] == 2 and entry["gpus"] == 2 * replicas
    predicted = {p["replicas"]: p for p in entry["predictions"]}  # at 3x itself, without the headroom
    assert sorted(predicted) == [replicas - 1, replicas, replicas + 1]
    for size, prediction in predicted.items():
        waits = plain_fleet(arrivals * 1.15, np.full(len(arrivals), 1 / 6), size, 1)
        expected = np.percentile(waits + 0.015, 95) * 1000
        assert prediction["percentiles_ms"]["ttft"]["p95"] == pytest.approx(expected, rel=0.02), size

    model = yaml.safe_load(COST_MODEL.read_text())["cost_model"]
    lease_hour = model["self_host_path"]["h100_monthly_lease"] / 720
    engineering = model["self_host_path"]["engineering_overhead_annual"] / 12
    monthly_self = 2 * replicas * lease_hour * 720 + engineering
    assert entry["monthly_cost_usd"] == pytest.approx(monthly_self)
    tokens = 3 * REQUESTS * (5 + 6) / (offsets[-1] - offsets[0]) * MONTH_S
    assert entry["monthly_tokens"] == pytest.approx(tokens)
    apis = {api["name"]: api for api in entry["apis"]}
    assert apis["cost model"]["monthly_usd"] == pytest.approx(
        tokens * model["api_path"]["cost_per_million_tokens"] / 1e6
    )
    prices = yaml.safe_load(PRICES.read_text())["providers"]["openai"]["models"]["gpt-4o"]
    prompt, completion = tokens * 5 / 11, tokens * 6 / 11
    gpt4o = (prompt * prices["input_per_mtok"] + completion * prices["output_per_mtok"]) / 1e6
    assert apis["openai/gpt-4o"]["monthly_usd"] == pytest.approx(gpt4o)

    # The break-even against each API, checked on the cost functions: self-hosting costs no more than the
    # API at every volume above it (a grid of them), and more just below it.
    def self_cost(volume_factor: float) -> float:  # the simulated fleet, in proportion to the volume
        fleet = max(math.ceil(serving * volume_factor - 1e-9), 1) + 1
        return fleet * 2 * lease_hour * 720 + engineering

    for api in entry["apis"]:
        even = api["break_even_tokens_per_month"]
        if even is None:
            assert "stays cheaper" in api["break_even_note"]
            continue
        at = even / tokens  # as a factor of the planned volume
        above = np.linspace(at * 1.0001, at * 50, 400)
        assert all(self_cost(f) <= api["monthly_usd"] * f * (1 + 1e-9) for f in above), api["name"]
        if at > 0:  # just below it, the API is cheaper
            below = at * (1 - 1e-9)
            assert self_cost(below) > api["monthly_usd"] * below, api["name"]

    verdict = entry["verdict"]
    conditions = {c["name"]: c for c in verdict["conditions"]}
    assert set(conditions) == {
        "gpu_infrastructure_allocated", "volume_above_threshold", "frontier_capability_not_required", "on_call_coverage"
    }  # fmt: skip
    assert conditions["volume_above_threshold"]["met"] == (tokens >= 200e6)
    assert "computed" in conditions["volume_above_threshold"]["source"]
    assert conditions["gpu_infrastructure_allocated"]["met"] is False  # as the example file says
    assert str(COST_MODEL) in conditions["on_call_coverage"]["source"]
    assert verdict["compared_api"] == "cost model"
    assert verdict["decision"] == "api"  # a condition fails (and on this traffic the API is cheaper anyway)


def test_the_volume_condition_and_the_verdict_follow_the_rule(swept, capsys, tmp_path):
    sweep_dir, log, _ = swept
    answers = tmp_path / "all-yes.yaml"
    model = yaml.safe_load(COST_MODEL.read_text())
    model["cost_model"]["decision_threshold"]["conditions"] = [
        {"gpu_infrastructure_allocated": True},
        "volume_above_threshold",
        {"frontier_capability_not_required": True},
        {"on_call_coverage": True},
    ]
    model["cost_model"]["api_path"]["cost_per_million_tokens"] = 1000.0  # an API dear enough to lose
    answers.write_text(yaml.safe_dump(model))
    base = ["--sweep", str(sweep_dir), "--log", str(log), "--cost-model", str(answers)]
    big = _plan(capsys, *base, "--volume", "300M-tokens/month")
    assert big["demand"]["monthly_tokens"] == pytest.approx(300e6)
    assert big["plans"][0]["verdict"]["decision"] == "self-host", big["plans"][0]["verdict"]
    dear = next(api for api in big["plans"][0]["apis"] if api["name"] == "cost model")
    assert dear["break_even_tokens_per_month"] is not None and dear["break_even_tokens_per_month"] < 300e6
    small = _plan(capsys, *base, "--volume", "100M-tokens/month")
    verdict = small["plans"][0]["verdict"]
    assert verdict["decision"] == "api" and "volume_above_threshold" in verdict["reason"]
    # Without a volume, the cost model's api_path.monthly_tokens is the volume planned for.
    assert _plan(capsys, *base)["demand"]["monthly_tokens"] == pytest.approx(300e6)


def test_the_table_names_the_fleet_the_apis_and_the_conditions(swept, capsys):
    sweep_dir, log, _ = swept
    argv = ["capacity", "--sweep", str(sweep_dir), "--log", str(log), "--volume", "300M-tokens/month"]
    assert main([*argv, "--prices", str(PRICES), "--cost-model", str(COST_MODEL)]) == 0
    printed = capsys.readouterr().out
    assert "Capacity plan: modelled" in printed and "openai/gpt-4o" in printed and "verdict: API" in printed
    assert "gpu_infrastructure_allocated: NOT met" in printed and "volume_above_threshold: met" in printed


def test_what_cannot_be_planned_is_refused_with_its_reason(swept, capsys, tmp_path):
    sweep_dir, log, _ = swept
    assert main(["capacity", "--sweep", str(tmp_path), "--log", str(log)]) == 2
    assert "not a sweep directory" in capsys.readouterr().err
    assert main(["capacity", "--sweep", str(sweep_dir), "--log", str(log), "--volume", "lots"]) == 2
    assert "--volume 'lots'" in capsys.readouterr().err
    unmet = _plan(capsys, "--sweep", str(sweep_dir), "--log", str(log), "--slo", "ttft_p95=1ms")
    entry = unmet["plans"][0]
    assert entry["replicas"] is None and entry["slo_capacity_rps"] is None
    assert any("no SLO capacity" in note for note in entry["notes"])
    assert unmet["capacities"][0]["rejudged"] is True  # judged again from the points' rows under the new SLO
