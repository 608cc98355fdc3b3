"""Benchmark: `shadowreplay report RUN_DIR --json --prices none` (analysis/) against DuckDB computing the
same figures from the same Parquet files, measured in the same run.

A synthetic run directory in the results contract (replay/schemas/results.py RESULTS_SCHEMA, several
shards written with pyarrow) is generated first: `--rows` final result rows over `--targets` targets
(one row per request and target), `--tokens` token times per ok row, 1% of rows failed (HTTP 500, no
tokens), no tags. Then each contender runs in its own fresh process, as a user runs it: ours is the
CLI itself (interpreter start, imports, summary.json and report.html included), DuckDB a Python
process that runs one SQL query. Wall time is taken around each child, peak resident memory from the
kernel's accounting of that one child (`os.wait4`). `--repeats` rounds (default 3) alternate the two, and
the medians are compared, so a burst of other work on the host slows one round of each, not one contender.

The figures are checked to agree (per target: requests, ok, errors; count, mean, p50, p90, p95, p99
and max of TTFT, ITL, TPOT and e2e; requests/s and output tokens/s in the steady window), with
DuckDB's `quantile_cont` (linear interpolation, the report's method). Target: within 1.2x of DuckDB's
time, peak memory under 2 GB at 10 million rows.

    .venv/bin/python scripts/bench_analysis.py                    # 10 million rows, 2 targets, 8 tokens, 3 rounds
    .venv/bin/python scripts/bench_analysis.py --rows 1000000 --tokens 16
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shadowreplay.analysis.metrics import table as metrics
from shadowreplay.replay.schemas.manifest import Counts, Manifest
from shadowreplay.replay.schemas.results import RESULTS_SCHEMA
from shadowreplay.replay.schemas.run_dir import RunDir
from shadowreplay.replay.secrets import Scrubber

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_children import cli, run_child  # noqa: E402

SHARD_REQUESTS = 500_000  # requests per shard (each shard holds their rows for every target)
ERROR_SHARE = 0.01
RATE_RPS = 200.0
COMPARED_METRICS = ("ttft", "itl", "tpot", "e2e")
COMPARED_STATS = ("count", "mean", "p50", "p90", "p95", "p99", "max")
REL_TOLERANCE = 1e-9

# Each part reads the Parquet files itself (DuckDB pushes the projection and the `final` filter into each
# scan), so no intermediate table of all columns is materialized.
DUCKDB_QUERY = """
WITH win AS (
    SELECT min(scheduled_s) + $warmup * (max(scheduled_s) - min(scheduled_s)) AS start_s, max(scheduled_s) AS end_s
    FROM read_parquet($files) WHERE final
),
per_row AS (
    SELECT target, count(*) AS requests, count(*) FILTER (status = 'ok') AS ok,
           count(*) FILTER (status <> 'ok') AS errors,
           count(*) FILTER (status = 'ok' AND done_s BETWEEN win.start_s AND win.end_s) AS window_completed,
           sum(coalesce(completion_tokens, client_tokens))
               FILTER (status = 'ok' AND done_s BETWEEN win.start_s AND win.end_s) AS window_output_tokens,
           any_value(win.end_s - win.start_s) AS window_s,
           count(ttft_ms) FILTER (status = 'ok') AS ttft_count, avg(ttft_ms) FILTER (status = 'ok') AS ttft_mean,
           max(ttft_ms) FILTER (status = 'ok') AS ttft_max,
           quantile_cont(ttft_ms, [0.5, 0.9, 0.95, 0.99]) FILTER (status = 'ok') AS ttft_q,
           count(tpot_ms) FILTER (status = 'ok') AS tpot_count, avg(tpot_ms) FILTER (status = 'ok') AS tpot_mean,
           max(tpot_ms) FILTER (status = 'ok') AS tpot_max,
           quantile_cont(tpot_ms, [0.5, 0.9, 0.95, 0.99]) FILTER (status = 'ok') AS tpot_q,
           count(e2e_ms) FILTER (status = 'ok') AS e2e_count, avg(e2e_ms) FILTER (status = 'ok') AS e2e_mean,
           max(e2e_ms) FILTER (status = 'ok') AS e2e_max,
           quantile_cont(e2e_ms, [0.5, 0.9, 0.95, 0.99]) FILTER (status = 'ok') AS e2e_q
    FROM (
        SELECT *, CASE WHEN coalesce(completion_tokens, client_tokens) > 1
                  THEN (e2e_ms - ttft_ms) / (coalesce(completion_tokens, client_tokens) - 1) END AS tpot_ms
        FROM read_parquet($files) WHERE final
    ), win
    GROUP BY target
),
per_gap AS (
    SELECT target, count(itl_ms) AS itl_count, avg(itl_ms) AS itl_mean, max(itl_ms) AS itl_max,
           quantile_cont(itl_ms, [0.5, 0.9, 0.95, 0.99]) AS itl_q
    FROM (
        SELECT target, unnest(list_slice(token_times_ms, 2, len(token_times_ms)))
                       - unnest(list_slice(token_times_ms, 1, len(token_times_ms) - 1)) AS itl_ms
        FROM read_parquet($files) WHERE final AND status = 'ok'
    )
    GROUP BY target
)
SELECT * FROM per_row LEFT JOIN per_gap USING (target) ORDER BY target
"""

DUCKDB_CHILD = f"""
import json, sys, time
import duckdb
started = time.perf_counter()
connection = duckdb.connect()
files = sys.argv[1:]
cursor = connection.execute({DUCKDB_QUERY!r}, {{"files": files, "warmup": {metrics.DEFAULT_WARMUP_FRACTION!r}}})
names = [d[0] for d in cursor.description]
rows = [dict(zip(names, row)) for row in cursor.fetchall()]
print(json.dumps({{"seconds": time.perf_counter() - started, "rows": rows}}))
"""


def _shard(first: int, count: int, targets: list[str], tokens: int, rng: np.random.Generator) -> pa.Table:
    """The rows of requests first..first+count-1 for every target, vectorised."""
    scheduled = (first + np.arange(count)) / RATE_RPS + rng.uniform(0, 1 / RATE_RPS, count)
    request_ids = pc.binary_join_element_wise("r", pa.array(first + np.arange(count)).cast(pa.string()), "")
    parts = []
    for index, target in enumerate(targets):
        ok = rng.random(count) >= ERROR_SHARE
        n_ok = int(ok.sum())
        lateness = rng.exponential(0.3, count)
        sent = scheduled + lateness / 1000.0
        ttft = np.where(ok, rng.lognormal(math.log(40.0 * (1 + index)), 0.5, count), np.nan)
        gaps = rng.lognormal(math.log(8.0), 0.4, (n_ok, max(tokens - 1, 0)))
        times = np.concatenate([ttft[ok, None], ttft[ok, None] + np.cumsum(gaps, axis=1)], axis=1)
        lengths = np.where(ok, tokens, 0)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        token_times = pa.ListArray.from_arrays(pa.array(offsets), pa.array(times.ravel()))
        last = np.full(count, np.nan)
        last[ok] = times[:, -1]
        done = sent + np.where(ok, last + 0.5, 30.0) / 1000.0
        prompt = rng.integers(16, 2048, count).astype(np.int32)
        ok_mask = pa.array(ok)

        def when_ok(values: np.ndarray, mask: pa.Array = ok_mask) -> pa.Array:
            return pc.if_else(mask, pa.array(values), None)

        columns = {
            "run_id": pa.array(["bench-run"] * count),
            "target": pa.array([target] * count),
            "request_id": request_ids,
            "attempt": pa.array(np.ones(count, np.int32)),
            "final": pa.array(np.ones(count, bool)),
            "worker": pa.array([f"w{index}"] * count),
            "replica": pa.array(np.zeros(count, np.int16)),
            "segment": pa.array(np.zeros(count, np.int16)),
            "scheduled_s": pa.array(scheduled),
            "sent_s": pa.array(sent),
            "first_token_s": when_ok(sent + np.nan_to_num(ttft) / 1000.0),
            "last_token_s": when_ok(sent + np.nan_to_num(last) / 1000.0),
            "done_s": pa.array(done),
            "lateness_ms": pa.array(lateness),
            "ttft_ms": when_ok(np.nan_to_num(ttft)),
            "e2e_ms": when_ok(np.nan_to_num(last)),
            "token_times_ms": token_times,
            "prompt_tokens": pa.array(prompt),
            "completion_tokens": when_ok(np.full(count, tokens, np.int32)),
            "client_tokens": pa.array(lengths.astype(np.int32)),
            "expected_prompt_tokens": pa.array(prompt),
            "expected_completion_tokens": pa.array(np.full(count, tokens, np.int32)),
            "clamped": pa.array(np.zeros(count, bool)),
            "raised": pa.array(np.zeros(count, bool)),
            "finish_reason": pc.if_else(ok_mask, "length", None),
            "status": pc.if_else(ok_mask, "ok", "http_error"),
            "http_status": pc.if_else(ok_mask, 200, 500).cast(pa.int32()),
            "error": pc.if_else(ok_mask, None, "HTTP 500"),
            "output_text": pa.nulls(count, pa.string()),
            "tag": pa.nulls(count, pa.string()),
        }
        parts.append(pa.table(columns).cast(RESULTS_SCHEMA))
    return pa.concat_tables(parts)


def make_run_dir(run_dir: Path, rows: int, targets: int, tokens: int, seed: int = 0) -> list[Path]:
    """A run directory of `rows` final result rows (rows / targets requests, each on every target)."""
    rng = np.random.default_rng(seed)
    names = [f"target-{chr(ord('a') + i)}" for i in range(targets)]
    requests = max(rows // targets, 1)
    results = run_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, first in enumerate(range(0, requests, SHARD_REQUESTS)):
        table = _shard(first, min(SHARD_REQUESTS, requests - first), names, tokens, rng)
        path = results / f"part-w{shard:03d}-00000.parquet"
        pq.write_table(table, path)
        paths.append(path)
    # A finished run's manifest: `report` checks that the run is whole (every planned pair's final row)
    # as it does for a user's run, and prints no warning.
    manifest = Manifest(
        run_id="bench-run",
        status="completed",
        targets=[{"name": name, "kind": "openai"} for name in names],
        counts=Counts(requests=requests, scheduled=requests * targets),
    )
    RunDir(run_dir).write_manifest(manifest, Scrubber())
    return paths


def report_command(run_dir: Path) -> list[str]:
    return cli("report", str(run_dir), "--json", "--prices", "none")


def ours_figures(summary: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per target, the compared figures from the report's JSON."""
    figures = {}
    for target, entry in summary["targets"].items():
        stats = entry["all"]
        row: dict[str, float | None] = {key: stats[key] for key in ("requests", "ok", "errors")}
        for metric in COMPARED_METRICS:
            for key in COMPARED_STATS:
                row[f"{metric}_{key}"] = stats["latency_ms"][metric][key]
        row["requests_per_s"] = stats["throughput"]["requests_per_s"]
        row["output_tokens_per_s"] = stats["throughput"]["output_tokens_per_s"]
        figures[target] = row
    return figures


def duckdb_figures(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per target, the compared figures from DuckDB's result rows."""
    figures = {}
    for raw in rows:
        row: dict[str, float | None] = {key: raw[key] for key in ("requests", "ok", "errors")}
        for metric in COMPARED_METRICS:
            quantiles = raw[f"{metric}_q"] or [None] * 4
            row[f"{metric}_count"] = raw[f"{metric}_count"] or 0
            row[f"{metric}_mean"] = raw[f"{metric}_mean"]
            row[f"{metric}_max"] = raw[f"{metric}_max"]
            for key, value in zip(COMPARED_STATS[2:6], quantiles):
                row[f"{metric}_{key}"] = value
        window_s = raw["window_s"]
        row["requests_per_s"] = raw["window_completed"] / window_s if window_s > 0 else None
        tokens = raw["window_output_tokens"] or 0
        row["output_tokens_per_s"] = tokens / window_s if window_s > 0 else None
        figures[raw["target"]] = row
    return figures


def disagreements(ours: dict[str, dict[str, Any]], theirs: dict[str, dict[str, Any]]) -> list[str]:
    """Every figure on which the two differ beyond REL_TOLERANCE (one line each); empty when all agree."""
    if sorted(ours) != sorted(theirs):
        return [f"targets differ: ours {sorted(ours)}, duckdb {sorted(theirs)}"]
    lines = []
    for target, row in ours.items():
        for key, value in row.items():
            other = theirs[target][key]
            if value is None or other is None:
                same = value is None and other is None
            else:
                same = math.isclose(float(value), float(other), rel_tol=REL_TOLERANCE, abs_tol=1e-9)
            if not same:
                lines.append(f"{target} {key}: ours {value}, duckdb {other}")
    return lines


def compare(run_dir: Path, files: list[Path], repeats: int = 3) -> dict[str, Any]:
    """Both contenders on one run directory, `repeats` rounds alternating ours and DuckDB (a burst of other
    work on the host then slows one round of each, not one contender): each round's times and peaks, their
    medians, the figures and the disagreements (of every round's figures against DuckDB's)."""
    rounds = []
    lines: list[str] = []
    ours: dict[str, dict[str, Any]] = {}
    theirs: dict[str, dict[str, Any]] = {}
    for _ in range(repeats):
        ours_s, ours_mib, ours_out = run_child(report_command(run_dir))
        duck_s, duck_mib, duck_out = run_child([sys.executable, "-c", DUCKDB_CHILD, *map(str, files)])
        duck = json.loads(duck_out.strip().splitlines()[-1])
        ours = ours_figures(json.loads(ours_out))
        theirs = duckdb_figures(duck["rows"])
        lines += [line for line in disagreements(ours, theirs) if line not in lines]
        rounds.append(
            {
                "ours_s": ours_s,
                "ours_peak_mib": ours_mib,
                "duckdb_s": duck_s,
                "duckdb_query_s": duck["seconds"],
                "duckdb_peak_mib": duck_mib,
            }
        )
    medians = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    return {**medians, "rounds": rounds, "ours": ours, "duckdb": theirs, "disagreements": lines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="final result rows (default 10,000,000)")
    parser.add_argument("--targets", type=int, default=2, help="targets, each with rows / targets (default 2)")
    parser.add_argument("--tokens", type=int, default=8, help="token times per ok row (default 8)")
    parser.add_argument("--workdir", type=Path, help="where to put the run directory (default: a temporary one)")
    parser.add_argument(
        "--run-dir", type=Path, help="keep the generated run directory here, and reuse it when it has results already"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds, each running both contenders; medians are compared (default 3)"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        run_dir = args.run_dir or Path(tmp) / "run"
        files = sorted((run_dir / "results").glob("*.parquet"))
        if files:
            print(f"reusing {run_dir}: {len(files)} shards (--rows, --targets and --tokens are those it was made with)")
        else:
            started = time.perf_counter()
            files = make_run_dir(run_dir, args.rows, args.targets, args.tokens)
            size = sum(path.stat().st_size for path in files)
            print(
                f"generated {args.rows:,} rows ({args.targets} targets, {args.tokens} tokens a row) in {len(files)} "
                f"shards, {size / 1e6:,.0f} MB, in {time.perf_counter() - started:.1f} s"
            )
        result = compare(run_dir, files, max(args.repeats, 1))
    for index, round_ in enumerate(result["rounds"], 1):
        print(
            f"  round {index}: shadowreplay report {round_['ours_s']:6.2f} s {round_['ours_peak_mib']:6.0f} MiB, "
            f"duckdb {round_['duckdb_s']:6.2f} s {round_['duckdb_peak_mib']:6.0f} MiB, "
            f"ratio {round_['ours_s'] / round_['duckdb_s']:.2f}x"
        )
    print(f"medians of {len(result['rounds'])} rounds:")
    print(f"  shadowreplay report {result['ours_s']:7.2f} s   peak {result['ours_peak_mib']:7.0f} MiB")
    print(
        f"  duckdb              {result['duckdb_s']:7.2f} s   peak {result['duckdb_peak_mib']:7.0f} MiB"
        f"   (query alone {result['duckdb_query_s']:.2f} s)"
    )
    memory_ratio = result["ours_peak_mib"] / result["duckdb_peak_mib"]
    print(
        f"ratio ours / duckdb: time {result['ours_s'] / result['duckdb_s']:.2f}x (target <= 1.2x); peak memory "
        f"{result['ours_peak_mib']:.0f} MiB (target < 2048 MiB), {memory_ratio:.2f}x duckdb's"
    )
    if result["disagreements"]:
        print("figures DISAGREE:\n  " + "\n  ".join(result["disagreements"]))
        return 1
    compared = sum(len(row) for row in result["ours"].values())
    print(f"figures agree: {compared} figures over {len(result['ours'])} targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
