"""Benchmark: `shadowreplay ingest` (replay/ingest/) of an Azure-shaped CSV against pyarrow's plain
read of the same CSV (`pyarrow.csv.read_csv`) and write of a Parquet file (`pyarrow.parquet.write_table`,
default options), measured in the same run.

Each measurement runs in its own fresh process: its time is taken inside the process around the
work (interpreter start and imports excluded on both sides), its peak resident memory from the
kernel's accounting of that one child (`os.wait4`). The contenders alternate, `--repeat` times each;
the best time and the largest peak of each are kept and the ratio ours / pyarrow is printed.
Target: within 1.5x of pyarrow's time, peak memory under 2 GB.

    .venv/bin/python scripts/bench_ingest.py                      # 10 million rows
    .venv/bin/python scripts/bench_ingest.py --rows 1000000 --repeat 1
    .venv/bin/python scripts/bench_ingest.py --order shuffled     # unordered input: the run merge
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

REPO = Path(__file__).resolve().parents[1]

BASELINE = """
import json, sys, time
import pyarrow.csv, pyarrow.parquet
started = time.perf_counter()
table = pyarrow.csv.read_csv(sys.argv[1])
pyarrow.parquet.write_table(table, sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - started, "rows": table.num_rows}))
"""

OURS = """
import json, sys, time
from shadowreplay.replay.ingest import IngestOptions, ingest
started = time.perf_counter()
summary = ingest(sys.argv[1], sys.argv[2], IngestOptions(format="azure"))
print(json.dumps({"seconds": time.perf_counter() - started, "rows": summary.kept,
                  "quarantined": summary.quarantined_total, "in_arrival_order": summary.in_arrival_order}))
"""

GENERATE_CHUNK = 1_000_000


def make_azure_csv(path: Path, rows: int, shuffled: bool, seed: int = 0) -> None:
    """An Azure-shaped CSV: TIMESTAMP (7 decimals, ~5.5 requests/s like the real trace),
    ContextTokens, GeneratedTokens; rows in arrival order unless `shuffled`. Vectorised, in chunks."""
    rng = np.random.default_rng(seed)
    start_ns = np.datetime64("2023-11-16T18:15:46", "ns").astype(np.int64)
    offsets = np.cumsum(rng.exponential(0.18e9, rows).astype(np.int64) // 100 * 100)
    if shuffled:
        rng.shuffle(offsets)
    with path.open("wb") as out:
        out.write(b"TIMESTAMP,ContextTokens,GeneratedTokens\n")
        for first in range(0, rows, GENERATE_CHUNK):
            ns = start_ns + offsets[first : first + GENERATE_CHUNK]
            count = len(ns)
            seconds = pc.cast(
                pa.array(ns // 1_000_000_000).cast(pa.timestamp("s")), pa.string()
            )  # "YYYY-MM-DD HH:MM:SS"
            fraction = pc.utf8_lpad(pc.cast(pa.array(ns % 1_000_000_000 // 100), pa.string()), width=7, padding="0")
            table = pa.table(
                {
                    "TIMESTAMP": pc.binary_join_element_wise(seconds, fraction, "."),
                    "ContextTokens": pa.array(rng.integers(1, 8000, count)),
                    "GeneratedTokens": pa.array(rng.integers(1, 1000, count)),
                }
            )
            pacsv.write_csv(table, out, pacsv.WriteOptions(include_header=False, quoting_style="none"))


def measure(code: str, source: Path, output: Path) -> dict:
    """Run `code` in a fresh Python process; its own report plus its peak RSS in MiB."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryFile(mode="w+") as stdout:
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(source), str(output)], stdout=stdout, cwd=REPO, env=env
        )
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise SystemExit(f"benchmark child failed with exit status {child.returncode}")
        stdout.seek(0)
        report = json.loads(stdout.read().strip().splitlines()[-1])
    report["peak_mib"] = usage.ru_maxrss / 1024  # Linux reports KiB
    output.unlink(missing_ok=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the generated CSV (default 10,000,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each contender, alternating (default 3)")
    parser.add_argument(
        "--order", choices=("sorted", "shuffled"), default="sorted", help="arrival order of the generated rows"
    )
    parser.add_argument("--workdir", type=Path, help="where to put the CSV (default: a temporary directory)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        source = workdir / "azure.csv"
        started = time.perf_counter()
        make_azure_csv(source, args.rows, shuffled=args.order == "shuffled")
        print(
            f"generated {args.rows:,} {args.order} rows, {source.stat().st_size / 1e6:,.0f} MB, "
            f"in {time.perf_counter() - started:.1f} s"
        )
        contenders = {"pyarrow read_csv + write_table": BASELINE, "shadowreplay ingest": OURS}
        runs: dict[str, list[dict]] = {name: [] for name in contenders}
        for _ in range(args.repeat):
            for name, code in contenders.items():
                report = measure(code, source, workdir / "out.parquet")
                if report["rows"] != args.rows:
                    raise SystemExit(f"{name} wrote {report['rows']:,} rows, expected {args.rows:,}")
                runs[name].append(report)
                print(f"  {name:32s} {report['seconds']:7.2f} s   peak {report['peak_mib']:7.0f} MiB")

    best = {name: min(r["seconds"] for r in reports) for name, reports in runs.items()}
    peak = {name: max(r["peak_mib"] for r in reports) for name, reports in runs.items()}
    ours, base = "shadowreplay ingest", "pyarrow read_csv + write_table"
    print(
        f"best of {args.repeat}: pyarrow {best[base]:.2f} s ({peak[base]:.0f} MiB), "
        f"ours {best[ours]:.2f} s ({peak[ours]:.0f} MiB)"
    )
    print(
        f"ratio ours / pyarrow: time {best[ours] / best[base]:.2f}x (target <= 1.5x); "
        f"peak memory {peak[ours]:.0f} MiB (target < 2048 MiB), {peak[ours] / peak[base]:.2f}x pyarrow's"
    )


if __name__ == "__main__":
    main()
