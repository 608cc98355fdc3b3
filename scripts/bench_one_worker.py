"""One shadowreplay worker process sending a constant request rate to an OpenAI-compatible server.

`python scripts/bench_one_worker.py --base-url URL --rate R --count N --tokens T --out DIR`
runs exactly what a Ray replay worker runs (replay/run/worker.py's `ReplayWorker`: its own
uvloop event loop, aiohttp session, streaming client and Parquet result shards), without Ray, in
this one process, so the benchmark can pin it to one core and call the figures "per process".
The plan is N completions requests of a fixed prompt asking for T tokens, the i-th scheduled at
i / R seconds after a start epoch a little in the future (the worker sets up its session first).
Result rows go to DIR/results/*.parquet (the results schema of docs/DESIGN.md). The last line
of stdout is JSON: `by_status` (final rows by status), `run_cpu_s` (the process's CPU seconds
during the run, every thread, the result writer's included), `cpu_ms_per_request` and `epoch`
(the wall-clock second the rows' `*_s` times count from).
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
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA  # noqa: E402
from shadowreplay.replay.targets.config import TargetConfig, Timeouts  # noqa: E402

START_LEAD_S = 0.5  # the first send is this long after the worker was built
PROMPT = "Count slowly from one to one hundred, one number per line, and say nothing else."


def constant_rate_plan(rate: float, count: int, tokens: int) -> pa.Table:
    """A replay plan of `count` completions rows, the i-th scheduled at i / rate seconds."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    offsets = np.arange(count, dtype=np.float64) / rate
    rows = [
        {
            "request_id": f"bench-{i:06d}",
            "arrival_time": start + timedelta(seconds=float(offsets[i])),
            "session_id": None,
            "api": "completions",
            "messages": None,
            "prompt": PROMPT,
            "params": json.dumps({"max_tokens": tokens}),
            "prompt_tokens": 16,
            "completion_tokens": tokens,
            "prefix_block_ids": None,
            "tag": None,
            "response_text": None,
            "reference": None,
        }
        for i in range(count)
    ]
    return build_plan(pa.Table.from_pylist(rows, schema=TRAFFIC_LOG_SCHEMA), offsets)


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8123/v1")
    parser.add_argument("--rate", type=float, required=True, help="requests per second, constant")
    parser.add_argument("--count", type=int, required=True, help="requests to send")
    parser.add_argument("--tokens", type=int, required=True, help="output tokens asked per request")
    parser.add_argument("--out", type=Path, required=True, help="directory for results/*.parquet")
    parser.add_argument("--busy-poll", action="store_true", help="the worker's busy_poll setting (replay --busy-poll)")
    args = parser.parse_args(argv)
    settings = WorkerSettings(run_id=args.out.name, worker="w0", run_dir=str(args.out), busy_poll=args.busy_poll)
    worker = ReplayWorker(
        settings, [scripted_target(args.base_url)], constant_rate_plan(args.rate, args.count, args.tokens)
    )
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
