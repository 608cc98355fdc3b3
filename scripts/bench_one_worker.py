"""One shadowreplay worker process sending a constant request rate to an OpenAI-compatible server.

`python scripts/bench_one_worker.py --base-url URL --rate R --count N --tokens T --out DIR`
runs exactly what a Ray replay worker runs (replay/run/worker.py's `ReplayWorker`: its own
uvloop event loop, aiohttp session, streaming client and Parquet result shards), without Ray, in
this one process, so the benchmark can pin it to one core: "the worker without Ray" of
scripts/bench_loadgen.py, set beside the real CLI to show what the actor path costs.
The plan is N completions requests of a fixed prompt asking for T tokens, the i-th scheduled at
i / R seconds after a start epoch a little in the future (the worker sets up its session first).
Result rows go to DIR/results/*.parquet (the results schema of docs/DESIGN.md). The last line
of stdout is JSON: `by_status` (final rows by status), `run_cpu_s` (the process's CPU seconds
during the run, every thread, the result writer's included; without --ray), `cpu_ms_per_request`
and `epoch` (the wall-clock second the rows' `*_s` times count from).

Variants, for splitting the actor path's cost into its parts (each changes one thing):
- `--ray`: the same plan through replay/run/runner.py's `run_plan` on a local Ray instance (one
  worker actor, as `replay --workers 1` runs it), without the CLI's session and display; with
  `--progress-interval S` the driver asks the actor for its progress every S seconds, as the CLI
  does (0, the default here: never).
- `--rows-after-run`: the result rows are kept in memory and written only after the run (the
  writer thread does nothing while requests are sent); alone or with `--ray`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from shadowreplay.replay.run.plan import build_plan  # noqa: E402
from shadowreplay.replay.run.worker import ReplayWorker, WorkerSettings  # noqa: E402
from shadowreplay.replay.schemas.shards import Row, ShardWriter  # noqa: E402
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA  # noqa: E402
from shadowreplay.replay.targets.config import TargetConfig, Timeouts  # noqa: E402

START_LEAD_S = 0.5  # the first send is this long after the worker was built
PROMPT = "Count slowly from one to one hundred, one number per line, and say nothing else."


def bench_log(offsets: np.ndarray, tokens: int) -> pa.Table:
    """A traffic log of completions rows asking for `tokens` tokens, the i-th arriving offsets[i] seconds
    after the first (the bench's one log shape, shared with scripts/bench_replay_cli.py)."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    params = json.dumps({"max_tokens": tokens})
    rows = [
        {
            "request_id": f"bench-{i:06d}",
            "arrival_time": start + timedelta(seconds=float(offset)),
            "session_id": None,
            "api": "completions",
            "messages": None,
            "prompt": PROMPT,
            "params": params,
            "prompt_tokens": 16,
            "completion_tokens": tokens,
            "prefix_block_ids": None,
            "tag": None,
            "response_text": None,
            "reference": None,
        }
        for i, offset in enumerate(offsets)
    ]
    return pa.Table.from_pylist(rows, schema=TRAFFIC_LOG_SCHEMA)


def constant_rate_plan(rate: float, count: int, tokens: int) -> pa.Table:
    """A replay plan of `count` completions rows, the i-th scheduled at i / rate seconds."""
    offsets = np.arange(count, dtype=np.float64) / rate
    return build_plan(bench_log(offsets, tokens), offsets)


def scripted_target(base_url: str) -> TargetConfig:
    """The scripted server as an `openai` target (no key, no tokenizer: usage counts the tokens)."""
    return TargetConfig(
        name="scripted",
        kind="openai",
        base_url=base_url,
        model="scripted",
        api="completions",
        timeouts=Timeouts(connect_s=5, first_token_s=10, total_s=30),
    )


class RowsAfterRun:
    """A result writer that keeps the rows until `close()`, then hands them all to the real one:
    while requests are sent the writer thread has nothing to do (`--rows-after-run`)."""

    def __init__(self, writer: ShardWriter):
        self.writer = writer
        self.rows: list[Row] = []

    def warm_up(self, sample_rows: list[Row]) -> None:
        self.writer.warm_up(sample_rows)

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def flush_if_due(self) -> int:
        return 0

    def close(self) -> int:
        for row in self.rows:
            self.writer.add(row)
        return self.writer.close()


def keep_rows_until_closed(worker: ReplayWorker) -> None:
    worker._writer = RowsAfterRun(worker._writer)  # type: ignore[assignment]


def run_on_ray(args: argparse.Namespace, plan: pa.Table) -> dict:
    """The plan through run_plan on a local Ray instance (one worker actor); the answer's fields."""
    import ray

    from shadowreplay.replay.run import runner

    if args.rows_after_run:

        class RowsAfterRunActor(runner.ReplayWorkerActor):
            def __init__(self, *arguments):
                super().__init__(*arguments)
                keep_rows_until_closed(self.worker)

        runner.REPLAY_WORKER_ACTOR = ray.remote(RowsAfterRunActor)
    runner.start_ray(None)
    try:
        settings = runner.RunSettings(run_dir=args.out, run_id=args.out.name, workers=1, busy_poll=args.busy_poll)
        interval = args.progress_interval
        outcome = runner.run_plan(
            plan,
            [scripted_target(args.base_url)],
            settings,
            on_progress=(lambda snapshot: None) if interval > 0 else None,
            progress_interval_s=interval if interval > 0 else runner.PROGRESS_INTERVAL_S,
        )
    finally:
        ray.shutdown()
    return {"by_status": outcome.by_status, "epoch": outcome.epoch}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8123/v1")
    parser.add_argument("--rate", type=float, required=True, help="requests per second, constant")
    parser.add_argument("--count", type=int, required=True, help="requests to send")
    parser.add_argument("--tokens", type=int, required=True, help="output tokens asked per request")
    parser.add_argument("--out", type=Path, required=True, help="directory for results/*.parquet")
    parser.add_argument("--busy-poll", action="store_true", help="the worker's busy_poll setting (replay --busy-poll)")
    parser.add_argument("--ray", action="store_true", help="through run_plan on a local Ray instance (one actor)")
    parser.add_argument(
        "--progress-interval", type=float, default=0.0, help="with --ray: progress polls every S seconds (0: none)"
    )
    parser.add_argument("--rows-after-run", action="store_true", help="write the result rows only after the run")
    args = parser.parse_args(argv)
    plan = constant_rate_plan(args.rate, args.count, args.tokens)
    if args.ray:
        print(json.dumps(run_on_ray(args, plan)), flush=True)
        return
    settings = WorkerSettings(run_id=args.out.name, worker="w0", run_dir=str(args.out), busy_poll=args.busy_poll)
    worker = ReplayWorker(settings, [scripted_target(args.base_url)], plan)
    if args.rows_after_run:
        keep_rows_until_closed(worker)
    cpu_before = time.process_time()
    epoch = time.time() + START_LEAD_S
    by_status = worker.run(epoch=epoch)
    cpu_s = time.process_time() - cpu_before
    answer = {
        "by_status": by_status,
        "run_cpu_s": cpu_s,
        "cpu_ms_per_request": cpu_s / max(1, args.count) * 1000.0,
        "epoch": epoch,
    }
    print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
