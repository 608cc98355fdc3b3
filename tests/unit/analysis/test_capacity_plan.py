"""The capacity planner's parts without a sweep (analysis/capacity/): the cost-model scaffold as the
runbook writes it, the sizing formula, the break-even on the step function, the demand of a log."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shadowreplay.analysis.capacity.cost_model import CostModelError, load_cost_model
from shadowreplay.analysis.capacity.demand import default_window_s, demand, sliding_peaks
from shadowreplay.analysis.capacity.fleet_plan import Sizing, break_even_factor
from shadowreplay.analysis.capacity.traffic_volume import TrafficVolume
from shadowreplay.analysis.metrics.slo import parse_slos
from tests.support.paths import REPO
from tests.support.traffic_logs import arrivals_log


def test_the_example_scaffold_loads_with_its_placeholder_and_conditions():
    model = load_cost_model(REPO / "configs" / "cost_model.example.yaml")
    assert model.api_cost_per_mtok == 5.0 and model.api_monthly_tokens == 300e6
    assert model.gpu_monthly_lease_usd == 2000 and model.engineering_monthly_usd == pytest.approx(10_000)
    assert model.gpu_count_required is None  # YOUR_CAPACITY_CALC: derive it
    assert model.volume_threshold_tokens == 200e6
    assert model.conditions == {
        "gpu_infrastructure_allocated": False,
        "volume_above_threshold": None,
        "frontier_capability_not_required": True,
        "on_call_coverage": False,
    }


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        (
            {"GPU infrastructure allocated": "yes", "on-call coverage": "no"},
            {"gpu_infrastructure_allocated": True, "on_call_coverage": False},
        ),
        (["frontier_capability_not_required"], {"frontier_capability_not_required": None}),
        ([{"name": "on_call", "met": True}], {"on_call_coverage": True}),
    ],
)  # fmt: skip
def test_conditions_are_read_in_the_shapes_the_scaffold_allows(tmp_path, conditions, expected):
    path = tmp_path / "model.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"cost_model": {"decision_threshold": {"conditions": conditions}}}))
    assert load_cost_model(path).conditions == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("cost_model:\n  self_host_path: {h100_monthly_lease: lots}\n", "self_host_path.h100_monthly_lease"),
        ("cost_model:\n  decision_threshold: {conditions: [{frontier_capability: true}]}\n", "unknown condition"),
        ("cost_model:\n  decision_threshold: {conditions: {on_call_coverage: maybe}}\n", "no status"),
        ("cost_model: [1, 2]\n", "must be a mapping"),
    ],
)
def test_a_cost_model_field_that_cannot_be_used_is_named(tmp_path, body, message):
    path = tmp_path / "model.yaml"
    path.write_text(body)
    with pytest.raises(CostModelError, match=message) as raised:
        load_cost_model(path)
    assert str(path) in str(raised.value)


def test_replicas_cover_the_peak_with_headroom_then_the_spare():
    sizing = Sizing(capacity_rps=4.0, headroom=0.25, spare=1)
    assert sizing.replicas(16.0) == math.ceil(16 * 1.25 / 4) + 1 == 6
    assert sizing.replicas(12.8) == 4 + 1  # exactly 4 replicas' worth: no fifth for rounding
    assert sizing.replicas(0.0) == 1 and sizing.replicas(0.0, at_least_one=True) == 2


def _cheaper_from(factor: float, api: float, sizing: Sizing, peak: float, lease: float, fixed: float) -> bool:
    """Self-hosting costs no more than the API at every volume factor from `factor` to 40x it."""
    for f in np.linspace(factor, factor * 40, 2000):
        replicas = sizing.replicas(peak * f, at_least_one=True)
        if replicas * lease + fixed > api * f * (1 + 1e-12):
            return False
    return True


@pytest.mark.parametrize(("api", "spare", "fixed"), [(6000.0, 0, 0.0), (9000.0, 1, 20_000.0), (5001.0, 0, 1000.0)])
def test_the_break_even_is_where_self_hosting_stays_cheaper(api, spare, fixed):
    sizing, peak, lease = Sizing(capacity_rps=2.0, headroom=0.0, spare=spare), 10.0, 1000.0  # 5 replicas at 1x
    factor, note = break_even_factor(api, sizing, peak, lease, fixed)
    assert note is None and factor is not None
    assert _cheaper_from(factor * 1.000001, api, sizing, peak, lease, fixed)
    assert not _cheaper_from(factor * (1 - 1e-9), api, sizing, peak, lease, fixed)  # the API is cheaper just below


def test_an_api_cheaper_per_replica_than_its_lease_has_no_break_even():
    factor, note = break_even_factor(3000.0, Sizing(2.0, 0.0, 0), 10.0, 1000.0, 0.0)  # 600 USD per replica's traffic
    assert factor is None and "stays cheaper" in note


def test_sliding_windows_count_every_run_of_sub_bins():
    assert sliding_peaks(np.array([1, 0, 3, 0, 0, 5]), 3).tolist() == [4, 3, 3, 5]
    assert sliding_peaks(np.array([2, 2]), 3).tolist() == [4]


def test_a_logs_demand_at_a_volume(tmp_path):
    offsets = np.concatenate([np.arange(100) * 1.0, 100 + np.arange(100) * 0.1])  # 1 req/s, then 10 req/s
    log = arrivals_log(tmp_path / "log.parquet", offsets)
    found = demand(log, window_s=10.0, volume=TrafficVolume.parse("2x"))
    assert found.mean_rps == pytest.approx(2 * 199 / offsets[-1])
    assert found.peak_rps == pytest.approx(2 * 10.0)  # a whole 10 s window inside the fast part
    assert found.monthly_tokens == pytest.approx(2 * 200 * 11 / offsets[-1] * 30 * 24 * 3600)
    assert found.hourly_peak_rps == (pytest.approx(20.0),)
    short = demand(log, window_s=1000.0)  # longer than the log: the whole log is the one window
    assert short.peak_rps == pytest.approx(short.mean_rps)


def test_the_default_window_lets_the_slo_notice_a_ten_percent_overload():
    assert default_window_s(parse_slos("ttft_p95=500ms"), 20.0) == pytest.approx(5.0)
    assert default_window_s(parse_slos("ttft_p95=500ms,e2e_p99=1.2s,tpot_p95=40ms"), 20.0) == pytest.approx(5.0)
    assert default_window_s(parse_slos("ttft_p95=50ms"), 20.0) == 1.0  # at least 1 s
    assert default_window_s(parse_slos("e2e_p95=30s"), 20.0) == 20.0  # at most the sweep's point length
    assert default_window_s(parse_slos("tpot_p95=40ms"), 20.0) == 20.0  # no backlog builds into TPOT


def test_bursts_hidden_by_long_windows_show_in_short_ones(tmp_path):
    from tests.support.traffic_logs import bursty_offsets

    log = arrivals_log(tmp_path / "bursty.parquet", bursty_offsets(400))
    assert demand(log, window_s=40.0).peak_to_average == pytest.approx(1.0, abs=0.05)
    assert demand(log, window_s=3.0).peak_to_average > 1.5
