"""The fleet simulation (analysis/capacity/fleet_simulation.py) against a plain request-by-request
simulation of the same fleet written here (every request routed to the replica with the fewest in
flight, each replica k slots first come first served), and against waits worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from shadowreplay.analysis.capacity.fleet_simulation import FleetSimulator, ReplicaService, fleet_waits
from shadowreplay.analysis.metrics.slo import parse_slos
from shadowreplay.errors import UserError
from tests.support.fleet_reference import plain_fleet


def bursty_arrivals(rng: np.random.Generator, n: int, mean_rate: float) -> np.ndarray:
    """Poisson arrivals whose rate swings between 0.5x and 1.5x the mean every 200 requests."""
    swing = np.where((np.arange(n) // 200) % 2 == 0, 1.5, 0.5)
    return np.cumsum(rng.exponential(1.0 / (mean_rate * swing)))


@pytest.mark.parametrize(("replicas", "slots", "load"), [(1, 1, 0.8), (1, 3, 0.9), (3, 2, 0.7), (6, 4, 0.85)])
def test_the_waits_are_those_of_the_plain_simulation(replicas, slots, load):
    rng = np.random.default_rng(replicas * 10 + slots)
    n = 6000
    service = rng.uniform(0.5, 1.5, n)
    arrivals = bursty_arrivals(rng, n, load * replicas * slots)
    ours, plain = fleet_waits(arrivals, service, replicas, slots), plain_fleet(arrivals, service, replicas, slots)
    assert (ours > 0).any()  # the fleet queued: the request-by-request stretches ran
    if replicas == 1:  # one replica: nothing depends on which replica held a request, so equal to the ns
        np.testing.assert_allclose(ours, plain, atol=1e-9)
    else:  # where a queued stretch starts, the requests in flight are dealt to the replicas in turn
        assert (ours > 0).mean() == pytest.approx((plain > 0).mean(), abs=0.01)
        for p in (50, 95, 99):
            assert np.percentile(ours + service, p) == pytest.approx(np.percentile(plain + service, p), rel=0.03)


def test_a_burst_waits_its_turn_by_hand():
    # 7 requests at once on 1 replica of 2 slots, 1 s each: waits 0, 0, 1, 1, 2, 2, 3 s
    waits = fleet_waits(np.zeros(7), np.ones(7), replicas=1, slots=2)
    np.testing.assert_allclose(waits, [0, 0, 1, 1, 2, 2, 3])
    # the same on 2 replicas: 4 slots in all
    np.testing.assert_allclose(fleet_waits(np.zeros(7), np.ones(7), replicas=2, slots=2), [0, 0, 0, 0, 1, 1, 1])
    # spaced out further than the service time: nobody waits, and no request is simulated one by one
    assert not fleet_waits(np.arange(100) * 1.01, np.ones(100), replicas=1, slots=1).any()


def service(slots: int, ttft_s: float, e2e_s: float) -> ReplicaService:
    return ReplicaService(
        sweep="sweep",
        slots=slots,
        ttft_s=np.full(10, ttft_s),
        e2e_s=np.full(10, e2e_s),
        tpot_s=np.full(10, (e2e_s - ttft_s) / 9),
        calibration_points=1,
        calibration_rps=1.0,
        saturation_rps=slots / e2e_s,
        saturated=True,
    )


def test_the_prediction_is_the_waits_plus_the_service_and_the_search_finds_the_threshold():
    rng = np.random.default_rng(3)
    arrivals = bursty_arrivals(rng, 4000, 9.0)  # 9 req/s on average, 13.5 in the bursts
    replica = service(slots=2, ttft_s=0.1, e2e_s=0.5)  # 4 req/s a replica
    simulator = FleetSimulator(replica, arrivals, parse_slos("ttft_p95=300ms,tpot_p95=1s,itl_p99=1s"))
    assert simulator.unpredicted == ["itl_p99=1000ms"]
    four = simulator.predict(4)
    waits = fleet_waits(np.sort(arrivals), np.full(len(arrivals), 0.5), 4, 2)
    assert four.percentiles_ms["ttft"]["p95"] == pytest.approx(np.percentile(waits + 0.1, 95) * 1000)
    assert four.percentiles_ms["e2e"]["p50"] == pytest.approx(np.percentile(waits + 0.5, 50) * 1000)
    assert four.percentiles_ms["tpot"]["p95"] == pytest.approx(400 / 9)
    assert four.queued_fraction == pytest.approx((waits > 0).mean())
    found = simulator.smallest_fleet(start=1)
    assert simulator.predict(found).meets and not simulator.predict(found - 1).meets
    assert simulator.smallest_fleet(start=20) == found == simulator.smallest_fleet(start=found)  # from above
    larger = simulator.smallest_fleet(start=1, rate_factor=1.5)  # 50% headroom: more replicas
    assert larger > found
    p95 = [simulator.predict(n).percentiles_ms["ttft"]["p95"] for n in range(found - 1, found + 3)]
    assert p95 == sorted(p95, reverse=True)  # more replicas, less wait


def test_an_overloaded_fleet_is_judged_without_simulating_all_its_queue_and_the_same_as_in_full():
    rng = np.random.default_rng(5)
    arrivals = bursty_arrivals(rng, 20_000, 9.0)
    replica = service(slots=2, ttft_s=0.1, e2e_s=0.5)
    for slos in ("ttft_p95=300ms", "ttft_p50=150ms,e2e_p99=900ms", "e2e_p90=2s"):
        judged = FleetSimulator(replica, arrivals, parse_slos(slos))
        in_full = FleetSimulator(replica, arrivals, parse_slos(slos))
        for replicas in range(1, 8):  # the early answer is the full prediction's, overloaded or not
            assert judged.meets(replicas) == in_full.predict(replicas).meets, (slos, replicas)
    # one replica of 4 req/s under 9 req/s: stopped once the SLO is certainly missed, long before the end
    stop = FleetSimulator(replica, arrivals, parse_slos("ttft_p95=300ms"))._stop_rule()
    assert fleet_waits(np.sort(arrivals), np.full(len(arrivals), 0.5), 1, 2, stop=stop) is None
    assert stop.misses[0] == stop.misses_allowed[0] + 1 < len(arrivals) / 10


def test_a_service_that_misses_the_slo_alone_has_no_fleet():
    arrivals = np.arange(100) * 1.0
    simulator = FleetSimulator(service(slots=1, ttft_s=0.5, e2e_s=0.8), arrivals, parse_slos("ttft_p95=300ms"))
    assert not simulator.meets(50)
    with pytest.raises(UserError, match="service alone misses an SLO"):
        simulator.smallest_fleet(start=1)
