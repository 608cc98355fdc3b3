"""`shadowreplay replay` as users run it, driven by scripts/bench_loadgen.py at a constant rate.

`ReplayCli(cpu).run(base_url, rate, count, tokens, workdir)` writes, under `workdir`,
a traffic log of `count` completions rows one second apart (the prompt and params of
scripts/bench_one_worker.py's plan: a fixed prompt asking for `tokens` tokens) and a target file
for the scripted server (`kind: openai`, no key, no tokenizer), then runs the console script:

    .venv/bin/shadowreplay replay LOG --target T.yaml --workers 1 --speed RATE -o RUN_DIR --worker-cpus CPU

The i-th request is scheduled at exactly i / RATE seconds (`--speed` divides the log's offsets,
loadgen/shapes.py TraceScaled; RATE is passed as its exact repr). That is the whole real path: the
CLI's local Ray instance (GCS, raylet, log monitor), the driver's progress polls and display
(plain lines: its output is a pipe), one Ray worker actor (replay/run/runner.py) running the
ReplayWorker, its background result writer. The worker process runs on CPU (the one process that
sends, as each peer tool is one process on that core); `--worker-cpus` puts the local Ray's own
processes on the host's other CPUs (replay/run/cpu_placement.py), and the driver where the kernel
puts it. `ReplayCli(cpu, one_core=True)` runs the CLI under `taskset -c CPU` instead, so that every
process it starts, Ray's included, shares that one core.

Returned: the final result rows (from RUN_DIR/results/*.parquet) and the run's epoch (the
wall-clock second the rows' `*_s` columns count from, from RUN_DIR/manifest.json). A run that
exits non-zero raises PeerRunFailed with the tail of its output.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bench_one_worker import bench_log
from peers.peer_tool import PeerRunFailed

from shadowreplay.replay.schemas.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = REPO / ".venv" / "bin" / "shadowreplay"
RESULT_COLUMNS = ["request_id", "final", "status", "scheduled_s", "sent_s", "token_times_ms"]
START_UP_ALLOWANCE_S = 180.0  # Ray's local start, the plan, the shutdown: on top of the run's own length
OUTPUT_TAIL_CHARS = 600


def one_second_log(count: int, tokens: int) -> pa.Table:
    """A traffic log of `count` completions rows, the i-th arriving i seconds after the first."""
    return bench_log(np.arange(count, dtype=np.float64), tokens)


def scripted_target_yaml(base_url: str) -> str:
    """The scripted server as a target file (the same target scripts/bench_one_worker.py builds)."""
    return (
        "name: scripted\n"
        "kind: openai\n"
        f"base_url: {base_url}\n"
        "model: scripted\n"
        "api: completions\n"
        "timeouts: {connect_s: 5, first_token_s: 10, total_s: 30}\n"
    )


class ReplayCli:
    """The `shadowreplay replay` console script, its worker on one core (see the module docstring)."""

    def __init__(self, cpu: int, one_core: bool = False, console_script: Path = CONSOLE_SCRIPT):
        self.cpu = cpu
        self.one_core = one_core
        self.console_script = console_script

    def run(
        self, base_url: str, rate: float, count: int, tokens: int, workdir: Path, busy_poll: bool = False
    ) -> tuple[list[dict], float]:
        """(final result rows, epoch) of one constant-rate replay of `count` requests at `rate`."""
        workdir.mkdir(parents=True, exist_ok=True)
        log, target, run_dir = workdir / "log.parquet", workdir / "scripted.yaml", workdir / "run"
        pq.write_table(one_second_log(count, tokens), log)
        target.write_text(scripted_target_yaml(base_url))
        command = [str(self.console_script), "replay", str(log)]
        command += ["--target", str(target), "--workers", "1", "--speed", repr(rate), "-o", str(run_dir)]
        command = (
            ["taskset", "-c", str(self.cpu), *command] if self.one_core else [*command, "--worker-cpus", str(self.cpu)]
        )
        command += ["--busy-poll"] if busy_poll else []
        env = dict(os.environ, TERM="dumb")  # plain progress lines, not a live panel, into the log
        limit_s = count / rate + START_UP_ALLOWANCE_S
        try:
            done = subprocess.run(
                command,
                cwd=workdir,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=limit_s,
            )
        except subprocess.TimeoutExpired:
            raise PeerRunFailed(f"shadowreplay replay did not finish within {limit_s:g} s") from None
        (workdir / "replay.log").write_text(done.stdout)
        if done.returncode != 0:
            tail = done.stdout[-OUTPUT_TAIL_CHARS:].strip().replace("\n", " | ")
            raise PeerRunFailed(f"shadowreplay replay exited with {done.returncode}: ...{tail}")
        runs = RunDir(run_dir)
        manifest = runs.read_manifest_json() or {}
        if manifest.get("epoch") is None:
            raise PeerRunFailed(f"shadowreplay replay wrote no epoch in {runs.manifest_path}")
        table = pq.read_table(runs.results_dir, columns=RESULT_COLUMNS)
        return table.filter(table.column("final")).to_pylist(), float(manifest["epoch"])
