"""`capacity --verify` against real local servers of known capacity (tests/support/faulty_server.py with
slots: 2 requests at once, 300 ms each, so 6.7 requests/s a replica), over real HTTP through local Ray:
a real trace sweep of one replica calibrates the fleet simulation; the plan's N for a bursty log is
the smallest fleet that meets the SLO when replayed (N passes, N - 1 fails), the simulation's p95 lies
within 15% of every replay's, and a flat log of the same mean needs fewer replicas."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from shadowreplay.cli import main
from tests.support.faulty_server import FaultyServerThread, Script
from tests.support.traffic_logs import arrivals_log

pytestmark = pytest.mark.timeout(600)

SLOTS = 2
SCRIPT = Script(ttft_ms=100.0, itl_ms=40.0)  # 6 tokens a request (log_row's max_tokens): 100 + 5 x 40 = 300 ms
SLO = "ttft_p95=400ms"
VOLUME = "2x"
SERVERS = 4  # enough for N + 1
TOLERANCE = 0.15


def bursty(span_s: float = 16.0) -> np.ndarray:
    """4 s at 4 req/s, then 4 s at 1 req/s, and again: a mean of 2.5 req/s, peaks 1.6x the mean."""
    cycle = np.concatenate([np.arange(16) * 0.25, 4.0 + np.arange(4) * 1.0])
    cycles = int(span_s // 8)
    return (cycle[None, :] + 8.0 * np.arange(cycles)[:, None]).ravel()


def flat(requests: int, span_s: float) -> np.ndarray:
    return np.arange(requests) * (span_s / requests)


@pytest.fixture(scope="module")
def servers():
    with ExitStack() as stack:
        yield [stack.enter_context(FaultyServerThread(SCRIPT, slots=SLOTS)) for _ in range(SERVERS)]


def _target(path: Path, urls: list[str]) -> Path:
    endpoints = "".join(f"  - {url}\n" for url in urls)
    path.write_text(f"name: slots\nkind: openai\nmodel: m\napi: chat\nendpoints:\n{endpoints}")
    return path


def test_the_planned_fleet_is_the_smallest_that_meets_the_slo_when_replayed(servers, tmp_path, capsys):
    offsets = bursty()
    log = arrivals_log(tmp_path / "bursty.parquet", offsets)
    one = _target(tmp_path / "one.yaml", [servers[0].base_url])
    sweep_dir = tmp_path / "sweep"
    argv = ["sweep", str(log), "--target", str(one), "--shape", "trace", "--from", "2", "--to", "9", "--points", "2"]
    argv += ["--duration", "6s", "--slo", SLO, "--bisect-steps", "0", "-o", str(sweep_dir)]
    assert main(argv) == 0
    fleet = _target(tmp_path / "fleet.yaml", [server.base_url for server in servers])
    plan_dir = tmp_path / "plan"
    argv = ["capacity", "--sweep", str(sweep_dir), "--log", str(log), "--volume", VOLUME, "--verify"]
    argv += ["--target", str(fleet), "-o", str(plan_dir)]
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    plan = json.loads((plan_dir / "plan.json").read_text())
    (entry,) = plan["plans"]
    model = entry["fleet_model"]
    assert model["slots"] == SLOTS, model  # Little's law at the sweep's saturation recovers the server's slots
    assert model["mean_service_s"] == pytest.approx(0.3, rel=0.1), model
    planned = entry["replicas"]
    assert entry["sizing"] == "fleet simulation"
    checks = {check["replicas"]: check for check in plan["verify"]}
    assert sorted(checks) == [planned - 1, planned, planned + 1] if planned > 1 else [1, 2]
    assert checks[planned]["slos_met"] is True, checks[planned]
    if planned > 1:
        assert checks[planned - 1]["slos_met"] is False, checks[planned - 1]
    for size, check in checks.items():
        for metric in ("ttft", "e2e"):
            error = check["error"][metric]
            assert error is not None and abs(error) <= TOLERANCE, (size, metric, check)
        assert check["predicted_slos_met"] == check["slos_met"], check
    predictions = {p["replicas"]: p for p in entry["predictions"]}  # the plan's own, on the whole volume
    for size in predictions:
        if size in checks:
            measured = checks[size]["measured_p95_ms"]["ttft"]
            assert predictions[size]["percentiles_ms"]["ttft"]["p95"] == pytest.approx(measured, rel=TOLERANCE)
    assert "Verified by replay" in out and f"{planned} (plan)" in out

    # The same mean, evenly spread: fewer replicas for the same SLO (the plan alone, no replay).
    flat_log = arrivals_log(tmp_path / "flat.parquet", flat(len(offsets), float(offsets[-1] - offsets[0])))
    capsys.readouterr()
    assert main(["capacity", "--sweep", str(sweep_dir), "--log", str(flat_log), "--volume", VOLUME, "--json"]) == 0
    (flat_entry,) = json.loads(capsys.readouterr().out)["plans"]
    assert flat_entry["replicas"] < planned, (flat_entry["replicas"], planned)
