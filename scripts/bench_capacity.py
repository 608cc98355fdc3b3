"""Benchmark: `shadowreplay capacity` on a 10-million-row traffic log against a plain polars group-by
computing the same demand figure (the peak request rate over sliding windows), in the same run.

The log is scripts/bench_startup.py's (token counts, exponential gaps at 5.5 requests/s, 128Ki-row
groups); the sweep is a small synthetic sweep directory in the sweep contract (loadgen/sweep.py
CURVE_SCHEMA, analysis/summary/models.py SweepSummary: four Poisson points, an SLO capacity), so what
is timed is the demand and the plan, not a sweep. Each contender runs in its own fresh process, as a
user runs it: ours is the CLI itself (`capacity --sweep S --log L --json`: interpreter start,
imports, the plan); the baseline a Python process that imports polars and numpy, scans the log's
arrival_time, counts arrivals per window / 10 bin in one group-by and takes the largest sum of ten
consecutive bins. Wall time around each child, peak resident memory of that child (`os.wait4`),
`--repeats` alternating rounds, medians compared; the two peaks must agree. Target: within 1.5x.

Not measured yet: the fleet simulation on 10M requests and 100 replicas (not built: issue 12).

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


def make_sweep(sweep_dir: Path) -> None:
    """A sweep directory in the contract: four Poisson points of one target, SLO capacity 4 req/s."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    points = []
    for index, (rate, met) in enumerate([(1.0, True), (2.0, True), (4.0, True), (8.0, False)]):
        points.append(
            {name: None for name in CURVE_SCHEMA.names}
            | {"point": index, "phase": "ramp", "shape": "poisson", "offered_rps": rate, "requests": 100,
               "achieved_rps": min(rate, 5.0), "output_tokens_per_s": 100.0 * min(rate, 5.0), "ttft_p95_ms": 100.0,
               "error_rate": 0.0, "slo_met": met, "run_dir": f"points/{index:02d}", "outlier": False}
        )  # fmt: skip
    pq.write_table(pa.Table.from_pylist(points, schema=CURVE_SCHEMA), sweep_dir / "curve.parquet")
    summary = SweepSummary.model_validate(
        {"target": "bench", "shape": "poisson", "levels": [1.0, 2.0, 4.0, 8.0], "duration_s": 20.0, "slos": SLO,
         "saturation": None, "points": 4, "curve": "curve.parquet", "slo_capacity_rps": 4.0}
    )  # fmt: skip
    (sweep_dir / "summary.json").write_text(json.dumps(summary.json_dict()))
    target = {"name": "bench", "kind": "vllm", "gpus_per_replica": 1}
    (sweep_dir / "manifest.json").write_text(json.dumps({"targets": [target]}))


def capacity_command(sweep_dir: Path, log: Path) -> list[str]:
    return cli("capacity", "--sweep", str(sweep_dir), "--log", str(log), "--window", f"{WINDOW_S:g}s", "--json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="traffic-log rows (default 10,000,000)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds; medians compared (default 3)")
    parser.add_argument("--workdir", type=Path, help="where to put the log and the sweep (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        log, sweep_dir = Path(tmp) / "log.parquet", Path(tmp) / "sweep"
        started = time.perf_counter()
        make_log(log, args.rows)
        make_sweep(sweep_dir)
        size_mb = log.stat().st_size / 1e6
        print(f"generated {args.rows:,} rows ({size_mb:,.0f} MB) in {time.perf_counter() - started:.1f} s")
        rounds = []
        for index in range(max(args.repeats, 1)):
            ours_s, ours_mib, ours_out = run_child(capacity_command(sweep_dir, log))
            base_s, base_mib, base_out = run_child([sys.executable, "-c", BASELINE, str(log), str(WINDOW_S)])
            ours_peak = json.loads(ours_out)["plans"][0]["peak_demand_rps"]
            base_peak = json.loads(base_out.strip().splitlines()[-1])["peak_rps"]
            rounds.append((ours_s, ours_mib, base_s, base_mib, ours_peak, base_peak))
            print(
                f"  round {index + 1}: capacity {ours_s:6.2f} s {ours_mib:6.0f} MiB, polars group-by {base_s:6.2f} s "
                f"{base_mib:6.0f} MiB, ratio {ours_s / base_s:.2f}x; peak {ours_peak:.4f} vs {base_peak:.4f} req/s"
            )
    ours_s, base_s = statistics.median(r[0] for r in rounds), statistics.median(r[2] for r in rounds)
    print(
        f"medians of {len(rounds)} rounds: capacity {ours_s:.2f} s, polars group-by {base_s:.2f} s: "
        f"ratio {ours_s / base_s:.2f}x (target <= 1.5x); peak memory {max(r[1] for r in rounds):.0f} MiB "
        f"against {max(r[3] for r in rounds):.0f} MiB"
    )
    disagree = [r for r in rounds if abs(r[4] - r[5]) > 1e-9 * max(abs(r[5]), 1.0)]
    if disagree:
        print(f"peaks DISAGREE: {disagree[0][4]} against {disagree[0][5]}")
        return 1
    print("the peak demand agrees in every round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
