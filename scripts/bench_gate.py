"""Benchmark: `shadowreplay gate RUN_DIR` (the shadow's judgement, as users run it: the CLI in its own process)
on a synthetic shadow of `--requests` requests, beside `shadowreplay report RUN_DIR --json --prices none`
on the same run directory as the baseline, measured in the same run, in alternating rounds.

The run directory is scripts/bench_analysis.py's synthetic run (two targets, `--tokens` token times a row,
1% failed) with an answer on every ok row ("The answer is <n>.", the candidate wrong on 10%) and
RUN_DIR/requests.parquet holding each request's reference, so `gate` pairs, scores (numeric), judges three
gates (TTFT p95 SLA, accuracy drop, error increase), groups the figures by window and tag and writes
gates.json, pairs.parquet, windows.parquet, summary.md and summary.html. Printed: both wall times and peak
memories (medians), and their ratios.

    .venv/bin/python scripts/bench_gate.py                     # 1 million requests (2 million rows), 3 rounds
    .venv/bin/python scripts/bench_gate.py --requests 200000 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_analysis import RATE_RPS, make_run_dir  # noqa: E402
from bench_children import cli, run_child  # noqa: E402

from shadowreplay.replay.schemas.shadow_requests import shadow_requests, write_shadow_requests  # noqa: E402

GATES = """alpha: 0.05
window: 1h
gates:
  - {name: ttft-sla, metric: ttft_p95_ms, max: 500}
  - {name: accuracy, metric: accuracy, scorer: numeric, max_drop: 0.02}
  - {name: errors, metric: error_rate, max_increase: 0.01}
"""


def add_answers(files: list[Path], seed: int = 1) -> None:
    """Every ok row's output_text: "The answer is <request number>." (target-b: off by one on 10% of rows)."""
    rng = np.random.default_rng(seed)
    for path in files:
        table = pq.read_table(path)
        number = pc.utf8_slice_codeunits(table.column("request_id"), 1)
        wrong = pa.array(rng.random(table.num_rows) < 0.1) if table.num_rows else pa.array([], pa.bool_())
        is_candidate = pc.equal(table.column("target"), "target-b")
        shifted = pc.cast(pc.add(pc.cast(number, pa.int64()), 1), pa.string())
        said = pc.if_else(pc.and_(is_candidate, wrong), shifted, number)
        text = pc.binary_join_element_wise("The answer is ", said, ".", "")
        text = pc.if_else(pc.equal(table.column("status"), "ok"), text, None)
        table = table.set_column(table.schema.get_field_index("output_text"), "output_text", text)
        pq.write_table(table, path)


def add_requests(run_dir: Path, requests: int) -> None:
    ids = pc.binary_join_element_wise("r", pa.array(np.arange(requests)).cast(pa.string()), "")
    start = datetime(2024, 5, 1, tzinfo=UTC).timestamp() * 1e6
    arrival = pa.array((start + np.arange(requests) / RATE_RPS * 1e6).astype(np.int64)).cast(
        pa.timestamp("us", tz="UTC")
    )
    rows = pa.table(
        {
            "request_id": ids,
            "arrival_time": arrival,
            "reference": pa.array(np.arange(requests)).cast(pa.string()),
        }
    )
    write_shadow_requests(shadow_requests(rows), run_dir / "requests.parquet")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        run_dir = Path(tmp) / "run"
        files = make_run_dir(run_dir, args.requests * 2, 2, args.tokens)
        add_answers(files)
        add_requests(run_dir, args.requests)
        gates = Path(tmp) / "gates.yaml"
        gates.write_text(GATES)
        gate = cli("gate", str(run_dir), "--baseline", "target-a", "--candidate", "target-b")
        gate += ["--gates", str(gates), "--prices", "none", "-o", str(Path(tmp) / "judgement")]
        report = cli("report", str(run_dir), "--json", "--prices", "none")
        ours: list[tuple[float, float]] = []
        base: list[tuple[float, float]] = []
        for _ in range(args.repeats):
            wall, rss, out = run_child(gate, ok_codes=(0, 3))
            ours.append((wall, rss))
            wall, rss, _ = run_child(report)
            base.append((wall, rss))
        print(out.strip().splitlines()[0])
    ours_wall, ours_rss = statistics.median(w for w, _ in ours), statistics.median(r for _, r in ours)
    base_wall, base_rss = statistics.median(w for w, _ in base), statistics.median(r for _, r in base)
    print(f"{args.requests:,} requests, 2 targets, {args.repeats} rounds (medians)")
    print(f"gate    {ours_wall:7.2f} s  {ours_rss:7.0f} MiB peak  (rounds {', '.join(f'{w:.2f}' for w, _ in ours)})")
    print(f"report  {base_wall:7.2f} s  {base_rss:7.0f} MiB peak  (rounds {', '.join(f'{w:.2f}' for w, _ in base)})")
    print(f"gate / report: {ours_wall / base_wall:.2f}x time, {ours_rss / base_rss:.2f}x memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
