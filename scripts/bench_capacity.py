"""Benchmark: `shadowreplay capacity` on a 10-million-row traffic log, in two halves, in the same run.

The log is scripts/bench_startup.py's (token counts, exponential gaps at 5.5 requests/s, 128Ki-row
groups). Each contender runs in its own fresh process, as a user runs it (interpreter start, imports,
the plan); wall time around each child, peak resident memory of that child (`os.wait4`), `--repeats`
alternating rounds, medians compared.

- Demand: ours is the CLI (`capacity --sweep S --log L --window 5s --json`) on a sweep with no rows to
  calibrate a fleet from (so the plan is the demand and the peak sizing, nothing else); the baseline a
  Python process that imports polars and numpy, scans the log's arrival_time, counts arrivals per
  window / 10 bin in one group-by and takes the largest sum of ten consecutive bins. The two peaks must
  agree. Target: within 1.5x.
- Fleet simulation: the same CLI on a sweep whose points have rows (one slot, 15 s a request:
  a replica serves 1/15 request a second, so the log's 5.5 requests/s need about 100 replicas): the
  fleet is simulated on all 10M arrivals while the search finds the fewest replicas meeting the SLO,
  and again for N - 1, N and N + 1. Its time is reported beside the demand half's (the difference is
  what the simulation adds) and the plan's replicas are checked against the peak's bound (at least
  the mean load / a replica's capacity).

The sweeps are small synthetic directories in the sweep contract (loadgen/sweep.py CURVE_SCHEMA,
analysis/summary/models.py SweepSummary; the rows in replay/schemas/results.py's RESULTS_SCHEMA), so
what is timed is the plan, not a sweep.

    .venv/bin/python scripts/bench_capacity.py                 # 10 million rows, 3 rounds
    .venv/bin/python scripts/bench_capacity.py --rows 1000000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shadowreplay.analysis.summary.models import SweepSummary
from shadowreplay.loadgen.sweep import CURVE_SCHEMA
from shadowreplay.replay.schemas.results import RESULTS_SCHEMA

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_children import cli, run_child  # noqa: E402
from bench_startup import make_log  # noqa: E402

WINDOW_S = 5.0  # the demand window both compute (capacity --window; the default for its SLO too)
SLO = "ttft_p95=500ms"
BASELINE = """
import json, sys
import numpy as np
import polars as pl
window_s, sub_bins = float(sys.argv[2]), 10
sub_us = int(round(window_s / sub_bins * 1e6))
micros = pl.col("arrival_time").dt.epoch("us")
scan = pl.scan_parquet(sys.argv[1])
first = scan.select(micros.min()).collect().item()
bins = scan.select(((micros - first) // sub_us).alias("bin")).group_by("bin").agg(pl.len()).collect(engine="streaming")
counts = np.zeros(bins.get_column("bin").max() + 1, dtype=np.int64)
counts[bins.get_column("bin").to_numpy()] = bins.get_column("len").to_numpy()
cumulative = np.concatenate([[0], np.cumsum(counts)])
print(json.dumps({"peak_rps": float((cumulative[sub_bins:] - cumulative[:-sub_bins]).max() / window_s)}))
"""


DEMAND_LEVELS = [(1.0, True), (2.0, True), (4.0, True), (8.0, False)]  # (offered req/s, met the SLO)
SERVICE_S = 15.0  # the simulated replica: one slot, 15 s a request (TTFT 0.4 s)
SIM_SLO = "ttft_p95=2000ms"  # canonical (as format_slos writes it): the points are not judged again
SIM_LEVELS = [(0.02, True), (0.04, True), (0.06, True), (0.08, False)]


def make_sweep(sweep_dir: Path, levels: list[tuple[float, bool]] = DEMAND_LEVELS, slo: str = SLO,
               saturation_rps: float = 5.0, rows: bool = False) -> None:  # fmt: skip
    """A sweep directory in the contract: four Poisson points of one target (the last one saturated at
    `saturation_rps`); with `rows`, the points that held have result rows of SERVICE_S each, one at a time."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    points = []
    for index, (rate, met) in enumerate(levels):
        points.append(
            {name: None for name in CURVE_SCHEMA.names}
            | {"point": index, "phase": "ramp", "shape": "poisson", "offered_rps": rate, "requests": 100,
               "achieved_rps": min(rate, saturation_rps), "output_tokens_per_s": 100.0 * min(rate, saturation_rps),
               "ttft_p95_ms": 100.0, "error_rate": 0.0, "slo_met": met, "run_dir": f"points/{index:02d}",
               "outlier": False, "saturation": None if met else "latency"}
        )  # fmt: skip
    pq.write_table(pa.Table.from_pylist(points, schema=CURVE_SCHEMA), sweep_dir / "curve.parquet")
    capacity = max(rate for rate, met in levels if met)
    summary = SweepSummary.model_validate(
        {"target": "bench", "shape": "poisson", "levels": [rate for rate, _ in levels], "duration_s": 20.0,
         "slos": slo, "saturation": None, "points": 4, "curve": "curve.parquet", "slo_capacity_rps": capacity}
    )  # fmt: skip
    for index, (_, met) in enumerate(levels):
        if rows and met:  # the points the calibration reads: those that held
            write_service_rows(sweep_dir / "points" / f"{index:02d}")
    (sweep_dir / "summary.json").write_text(json.dumps(summary.json_dict()))
    target = {"name": "bench", "kind": "vllm", "gpus_per_replica": 1}
    (sweep_dir / "manifest.json").write_text(json.dumps({"targets": [target]}))


def write_service_rows(point_dir: Path, requests: int = 40) -> None:
    """The lightest point's rows: requests SERVICE_S long, sent 60 s apart (none queued), 100 tokens each."""
    results = point_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(requests):
        sent = 60.0 * i
        rows.append(
            {name: None for name in RESULTS_SCHEMA.names}
            | {"run_id": "bench", "target": "bench", "request_id": f"r{i}", "attempt": 0, "final": True,
               "scheduled_s": sent, "sent_s": sent, "first_token_s": sent + 0.4, "done_s": sent + SERVICE_S,
               "ttft_ms": 400.0, "e2e_ms": SERVICE_S * 1000.0, "completion_tokens": 100, "status": "ok"}
        )  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=RESULTS_SCHEMA), results / "part-bench-00000.parquet")


def capacity_command(sweep_dir: Path, log: Path) -> list[str]:
    return cli("capacity", "--sweep", str(sweep_dir), "--log", str(log), "--window", f"{WINDOW_S:g}s", "--json")


def simulation_command(sweep_dir: Path, log: Path) -> list[str]:
    return cli("capacity", "--sweep", str(sweep_dir), "--log", str(log), "--json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="traffic-log rows (default 10,000,000)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds; medians compared (default 3)")
    parser.add_argument("--workdir", type=Path, help="where to put the log and the sweep (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        log, sweep_dir, sim_dir = Path(tmp) / "log.parquet", Path(tmp) / "sweep", Path(tmp) / "sim-sweep"
        started = time.perf_counter()
        make_log(log, args.rows)
        make_sweep(sweep_dir)
        make_sweep(sim_dir, SIM_LEVELS, SIM_SLO, saturation_rps=1.0 / SERVICE_S, rows=True)
        size_mb = log.stat().st_size / 1e6
        print(f"generated {args.rows:,} rows ({size_mb:,.0f} MB) in {time.perf_counter() - started:.1f} s")
        rounds = []
        for index in range(max(args.repeats, 1)):
            ours_s, ours_mib, ours_out = run_child(capacity_command(sweep_dir, log))
            base_s, base_mib, base_out = run_child([sys.executable, "-c", BASELINE, str(log), str(WINDOW_S)])
            ours_peak = json.loads(ours_out)["plans"][0]["peak_demand_rps"]
            base_peak = json.loads(base_out.strip().splitlines()[-1])["peak_rps"]
            sim_s, sim_mib, sim_out = run_child(simulation_command(sim_dir, log))
            sim_plan = json.loads(sim_out)["plans"][0]
            rounds.append((ours_s, ours_mib, base_s, base_mib, ours_peak, base_peak, sim_s, sim_mib, sim_plan))
            print(
                f"  round {index + 1}: capacity {ours_s:6.2f} s {ours_mib:6.0f} MiB, polars group-by {base_s:6.2f} s "
                f"{base_mib:6.0f} MiB, ratio {ours_s / base_s:.2f}x; peak {ours_peak:.4f} vs {base_peak:.4f} req/s; "
                f"with the fleet simulation {sim_s:6.2f} s {sim_mib:6.0f} MiB: {sim_plan['replicas']} replicas"
            )
    ours_s, base_s = statistics.median(r[0] for r in rounds), statistics.median(r[2] for r in rounds)
    print(
        f"medians of {len(rounds)} rounds: capacity {ours_s:.2f} s, polars group-by {base_s:.2f} s: "
        f"ratio {ours_s / base_s:.2f}x (target <= 1.5x); peak memory {max(r[1] for r in rounds):.0f} MiB "
        f"against {max(r[3] for r in rounds):.0f} MiB"
    )
    sim_s = statistics.median(r[6] for r in rounds)
    plan = rounds[-1][8]
    predictions = {p["replicas"]: p for p in plan["predictions"]}
    requests = predictions[plan["replicas"]]["requests"]
    print(
        f"fleet simulation: capacity with it {sim_s:.2f} s (median), {sim_s - ours_s:+.2f} s on the demand half, "
        f"peak memory {max(r[7] for r in rounds):.0f} MiB; {requests:,} requests, {plan['replicas']} replicas "
        f"(by the peak {plan['replicas_by_peak']}); predicted TTFT p95 "
        + ", ".join(
            f"{n} replicas {p['percentiles_ms']['ttft']['p95']:,.0f} ms" for n, p in sorted(predictions.items())
        )
    )
    bound = plan["mean_demand_rps"] * SERVICE_S  # fewer replicas than the mean load are overloaded for good
    if plan["replicas"] < bound:
        print(f"the plan's {plan['replicas']} replicas are BELOW the mean load's {bound:.1f}")
        return 1
    disagree = [r for r in rounds if abs(r[4] - r[5]) > 1e-9 * max(abs(r[5]), 1.0)]
    if disagree:
        print(f"peaks DISAGREE: {disagree[0][4]} against {disagree[0][5]}")
        return 1
    print("the peak demand agrees in every round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
