"""Benchmark: the replay driver's start-up up to the plan for a 20 s `--window` of a 10-million-row
traffic log against the same window of a 10,000-row log.

Both logs are token-count logs without text, like the ingested Azure trace (~5.5 requests/s, so a
20 s window holds about 110 rows of either), written with replay/schemas/traffic_log.py's
TRAFFIC_LOG_SCHEMA in row groups of 128Ki rows. What is timed is what `replay_log`
(replay/run/replay_session.py) runs before anything is sent: `select_rows` (open, schema check,
the window read), `arrival_offsets_s` and `build_plan`. Each measurement runs in its own fresh
process: its time is taken inside the process around that work (interpreter start and imports
excluded; the process's whole wall time is printed beside it), its peak resident memory is the
kernel's high-water mark of that process's own memory (VmHWM; imports included). The logs
alternate, `--repeat` times each; the best time and the largest peak of each are kept. Target:
the large log within 1 s of the small one, and its peak memory not growing with the rows the
window leaves out.

    .venv/bin/python scripts/bench_startup.py                       # 10 million rows against 10,000
    .venv/bin/python scripts/bench_startup.py --rows 1000000 --repeat 1
    .venv/bin/python scripts/bench_startup.py --checkout /tmp/before  # another checkout's code, same logs
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
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
ROW_GROUP = 128 * 1024
CHUNK = 8 * ROW_GROUP  # rows generated and written at a time
RATE = 5.5  # requests/s, the Azure trace's

START_UP = """
import json, sys, time
started = time.perf_counter()
from shadowreplay.replay.run import plan as plan_module
from shadowreplay.replay.run.plan import LengthClamp, Window, arrival_offsets_s, build_plan, select_rows
imported = time.perf_counter()
rows = select_rows(sys.argv[1], Window.parse(sys.argv[2]), None)
offsets = arrival_offsets_s(rows)
plan = build_plan(rows, offsets, LengthClamp(), None)
done = time.perf_counter()
# This process's own peak (VmHWM is per address space; a child's ru_maxrss would include the
# parent's RSS at the fork).
with open("/proc/self/status") as status:
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"seconds": done - imported, "imports": imported - started, "rows": plan.num_rows,
                  "peak_mib": peak_kib / 1024, "code": plan_module.__file__}))
"""


def make_log(path: Path, rows: int, seed: int = 0) -> float:
    """A token-count traffic log of `rows` rows in arrival order (exponential gaps at RATE/s),
    written CHUNK rows at a time in ROW_GROUP-row groups; returns its span in seconds. Vectorised."""
    from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA

    rng = np.random.default_rng(seed)
    start_us = np.datetime64("2023-11-16T18:15:46", "us").astype(np.int64)
    micros = start_us + np.cumsum(rng.exponential(1e6 / RATE, rows).astype(np.int64))
    with pq.ParquetWriter(path, TRAFFIC_LOG_SCHEMA) as writer:
        for first in range(0, rows, CHUNK):
            chunk = micros[first : first + CHUNK]
            n = len(chunk)
            ids = pc.cast(pa.array(np.arange(first, first + n)), pa.string())
            columns = {
                "request_id": pc.binary_join_element_wise("azure-", ids, ""),
                "arrival_time": pa.array(chunk).cast(pa.timestamp("us", tz="UTC")),
                "api": pa.repeat(pa.scalar("chat"), n),
                "prompt_tokens": pa.array(rng.integers(1, 8000, n).astype(np.int32)),
                "completion_tokens": pa.array(rng.integers(1, 1000, n).astype(np.int32)),
            }
            arrays = [columns.get(f.name, pa.nulls(n, f.type)) for f in TRAFFIC_LOG_SCHEMA]
            writer.write_table(pa.Table.from_arrays(arrays, schema=TRAFFIC_LOG_SCHEMA), row_group_size=ROW_GROUP)
    return float(micros[-1] - micros[0]) / 1e6


def log_span_s(log: Path) -> float:
    """Last arrival minus first, from the row-group statistics of a log in arrival order."""
    metadata = pq.ParquetFile(log).metadata
    column = pq.ParquetFile(log).schema_arrow.get_field_index("arrival_time")
    first = metadata.row_group(0).column(column).statistics.min_raw
    last = metadata.row_group(metadata.num_row_groups - 1).column(column).statistics.max_raw
    return (last - first) / 1e6


def measure(log: Path, window: str, checkout: Path) -> dict:
    """Run the start-up in a fresh Python process with `checkout`'s code; its report (with its peak
    RSS in MiB) plus its whole wall time."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    with tempfile.TemporaryFile(mode="w+") as stdout:
        started = time.perf_counter()
        command = [sys.executable, "-c", START_UP, str(log), window]
        child = subprocess.Popen(command, stdout=stdout, cwd=checkout, env=env)
        _, status, _ = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"benchmark child failed with exit status {os.waitstatus_to_exitcode(status)}")
        stdout.seek(0)
        report = json.loads(stdout.read().strip().splitlines()[-1])
    report["wall"] = wall
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the large log (default 10,000,000)")
    parser.add_argument("--small-rows", type=int, default=10_000, help="rows of the small log (default 10,000)")
    parser.add_argument("--window", default="60..80", help="the window replayed from both logs (default 60..80)")
    parser.add_argument("--repeat", type=int, default=3, help="runs on each log, alternating (default 3)")
    parser.add_argument("--checkout", type=Path, default=REPO, help="checkout whose code is measured (default: this)")
    parser.add_argument("--workdir", type=Path, help="keep the logs here, reused (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        logs = {}
        for name, rows in (("small", args.small_rows), ("large", args.rows)):
            log = workdir / f"startup-{rows}.parquet"
            if not log.exists() or pq.ParquetFile(log).metadata.num_rows != rows:
                started = time.perf_counter()
                span = make_log(log, rows)
                print(
                    f"generated the {name} log: {rows:,} rows over {span / 86400:.2f} days, "
                    f"{pq.ParquetFile(log).metadata.num_row_groups} row groups, {log.stat().st_size / 1e6:,.0f} MB, "
                    f"in {time.perf_counter() - started:.1f} s"
                )
            logs[name] = log
        # The same 20 s late in the large log (90% of its span): the rows read do not depend on where.
        late_s = int(0.9 * log_span_s(logs["large"]))
        late = f"{late_s}..{late_s + 20}"
        cases = {"small": (logs["small"], args.window), "large": (logs["large"], args.window)}
        cases["late"] = (logs["large"], late)
        runs: dict[str, list[dict]] = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, (log, window) in cases.items():
                report = measure(log, window, args.checkout)
                runs[name].append(report)
                print(
                    f"  {name:5s} {pq.ParquetFile(log).metadata.num_rows:>10,}-row log, --window {window:>17s}: "
                    f"{report['rows']:4d} rows planned in {report['seconds']:6.3f} s "
                    f"(process {report['wall']:5.2f} s), peak {report['peak_mib']:6.0f} MiB"
                )
        print(f"code measured: {runs['large'][0]['code']}")

    # Both logs draw the same arrival gaps, so a window inside the small log selects the same arrivals.
    if {r["rows"] for r in runs["small"]} != {r["rows"] for r in runs["large"]}:
        raise SystemExit("the two logs planned different numbers of rows for the same window")
    best = {name: min(r["seconds"] for r in reports) for name, reports in runs.items()}
    peak = {name: max(r["peak_mib"] for r in reports) for name, reports in runs.items()}
    print(
        f"best of {args.repeat}: {args.small_rows:,}-row log {best['small']:.3f} s ({peak['small']:.0f} MiB), "
        f"{args.rows:,}-row log {best['large']:.3f} s ({peak['large']:.0f} MiB), "
        f"late window {best['late']:.3f} s ({peak['late']:.0f} MiB)"
    )
    print(
        f"difference large - small: {best['large'] - best['small']:+.3f} s (target: within 1 s); "
        f"peak memory {peak['large'] - peak['small']:+.0f} MiB"
    )


if __name__ == "__main__":
    main()
