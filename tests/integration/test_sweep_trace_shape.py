"""`sweep --shape trace` (loadgen/shapes.py TracePattern): each load point replays the log's own arrival
pattern time-scaled to the point's rate, each arrival with its own request, so a bursty log's bursts
reach the server. Checked through the verb against a FIFO server of known capacity
(tests/support/fifo_model.py, 6 requests/s, exact and noiseless): a point's schedule is the log's
offsets divided by rate / the log's mean rate, its requests are the log's in arrival order, and a log
whose rate swings above its mean has a lower SLO capacity than a flat log of the same mean rate,
which Poisson arrivals drawn from either cannot tell apart."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import shadowreplay.loadgen.sweep as load_sweep
import shadowreplay.replay.run.runner as runner
from shadowreplay.cli import main
from shadowreplay.loadgen.shapes import TracePattern
from tests.support.faulty_server import FaultyServer
from tests.support.fifo_model import FifoServerModel
from tests.support.server_thread import ServerThread
from tests.support.traffic_logs import arrivals_log, bursty_offsets, flat_offsets

FIFO = FifoServerModel(server_rps=6.0, first_token_ms=15.0, output_tokens=8, timeout_s=3.0)
SLO = "ttft_p95=300ms"
REQUESTS = 240


def _sweep(tmp_path: Path, log: Path, shape: str, monkeypatch, name: str) -> dict:
    monkeypatch.setattr(load_sweep, "run_plan", FIFO.run_plan)
    monkeypatch.setattr(runner, "start_ray", lambda address, cpus=None: {})
    target = tmp_path / "target.yaml"
    sweep_dir = tmp_path / name
    argv = ["sweep", str(log), "--target", str(target), "--shape", shape, "--from", "0.5", "--to", "8"]
    argv += ["--points", "5", "--duration", "40s", "--slo", SLO, "--bisect-steps", "3", "-o", str(sweep_dir)]
    with ServerThread(FaultyServer()) as server:  # listens for the Session's endpoint check; the model serves
        target.write_text(f"name: modelled\nkind: openai\nbase_url: {server.base_url}\nmodel: m\napi: completions\n")
        assert main(argv) == 0
    return json.loads((sweep_dir / "summary.json").read_text()) | {"dir": str(sweep_dir)}


def test_a_trace_point_replays_the_logs_arrivals_scaled_to_its_rate(tmp_path, monkeypatch, capsys):
    offsets = bursty_offsets(REQUESTS)
    log = arrivals_log(tmp_path / "bursty.parquet", offsets)
    summary = _sweep(tmp_path, log, "trace", monkeypatch, "sweep")
    capsys.readouterr()
    assert summary["shape"] == "trace"
    curve = pq.read_table(Path(summary["dir"]) / "curve.parquet").to_pylist()
    first = next(p for p in curve if p["point"] == 0)
    point_dir = Path(summary["dir"]) / first["run_dir"]
    rows = sorted(pq.read_table(point_dir / "results").to_pylist(), key=lambda r: r["scheduled_s"])
    expected = TracePattern(offsets, rate=first["offered_rps"], duration_s=40.0)
    assert [r["scheduled_s"] for r in rows] == pytest.approx(list(expected.send_times()))
    logged = [r["request_id"].split("-", 2)[2] for r in rows]  # p00-<position>-<the log's id>
    assert logged == [f"req-{i:03d}" for i in expected.rows()]
    manifest = json.loads((point_dir / "manifest.json").read_text())
    shape = manifest["sweep_point"]["shape"]
    assert shape["kind"] == "TracePattern" and shape["log_arrivals"] == REQUESTS and "offsets_s" not in shape
    assert shape["speed"] == pytest.approx(first["offered_rps"] / expected.log_rate)


def test_bursts_lower_the_slo_capacity_only_when_the_trace_shape_keeps_them(tmp_path, monkeypatch, capsys):
    flat = arrivals_log(tmp_path / "flat.parquet", flat_offsets(REQUESTS))
    bursty = arrivals_log(tmp_path / "bursty.parquet", bursty_offsets(REQUESTS))
    capacity = {
        (log.stem, shape): _sweep(tmp_path, log, shape, monkeypatch, f"{log.stem}-{shape}")["slo_capacity_rps"]
        for log in (flat, bursty)
        for shape in ("trace", "poisson")
    }
    capsys.readouterr()
    assert all(value is not None for value in capacity.values()), capacity
    # A flat log at under 6 req/s never queues: its trace capacity is near the server's 6 req/s.
    assert capacity[("flat", "trace")] >= 4.0, capacity
    # The bursty log's peaks run at 1.6x its mean: its queue builds from a mean of 6 / 1.6 = 3.75 req/s.
    assert capacity[("bursty", "trace")] < 0.8 * capacity[("flat", "trace")], capacity
    # Poisson points draw requests from the log, not its arrivals: both logs give the same capacity.
    assert capacity[("bursty", "poisson")] == capacity[("flat", "poisson")], capacity
