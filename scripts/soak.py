"""Soak: the real `shadowreplay replay` CLI through faults and kills, then a long run of short requests.

    python scripts/soak.py [--requests 100000] [--rate 100] [--short-requests 1000000] [--short-rate 800]

Phase 1: a traffic log of `--requests` requests at `--rate` req/s (one second of log per `--rate`
requests), 20% of them faulty, spread evenly over six kinds the scripted server
(tests/support/faulty_server.py, in its own process on 127.0.0.1) acts out: HTTP 500, HTTP 429 with
Retry-After (once: the retry streams), a TCP reset mid-stream, a stall past the target's total
timeout, malformed SSE, an error event in the stream. `shadowreplay replay --workers 2`; at 30% of
the schedule one worker process is SIGKILLed, at 60% the driver; once its workers are gone,
`shadowreplay replay --resume`, again while it exits 4 (requests ended worker_lost). Printed: final
rows lost (planned requests without one) and duplicated (requests with more than one), both with
target 0; per fault kind, the final rows' statuses against the status that kind must end in, and
against the server's own fault log (GET /fault-log: what it served, per request, attempt by attempt).

Phase 2: `--short-requests` short requests (no delay, 2 tokens) at `--short-rate` req/s in one
replay; the resident memory (VmRSS) of the driver and of each worker process is sampled every
second. Printed: per process, RSS growth from the end of warm-up (10% of the schedule) to its last
sample, target under 10%.

Phase 2 also prints the final rows' send lateness and the rate they were done at (whether the
workers kept pace). Both phases print their wall time. The defaults are the issue's sizes; on a
2-core VM (the server, two workers and Ray on the same two cores), phase 1's 100,000 requests at
100 req/s take about 17 minutes of schedule (plus the start-ups and the resume's 40% of the schedule)
and phase 2's 1,000,000 at 800 req/s (kept in pace there) about 21 minutes: pick smaller sizes for a
quick look, e.g. `--requests 20000 --rate 150 --short-requests 200000` (about 9 minutes). Exits 1
when a target is missed.
Only processes this script started (and their descendants) are signalled or sampled.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA  # noqa: E402
from tests.support.run_processes import WORKER_TITLE, start_cli  # noqa: E402
from tests.support.target_files import write_target  # noqa: E402
from tests.support.traffic_logs import MESSAGES  # noqa: E402

FAULT_SHARE = 0.2
# kind -> the request's `faulty` script (tests/support/faulty_server.py) and the final status it must end in
KINDS: dict[str, tuple[dict, str]] = {
    "none": ({}, "ok"),
    "status_500": ({"status": 500}, "http_error"),
    "status_429": ({"status": 429, "retry_after": "1", "fault_attempts": 1}, "ok"),
    "reset": ({"fault": "reset", "fault_after_tokens": 2}, "connection_error"),
    "stall": ({"fault": "stall", "fault_after_tokens": 2, "stall_ms": 5000}, "timeout"),
    "malformed_sse": ({"fault": "malformed_sse", "fault_after_tokens": 2}, "stream_error"),
    "stream_error": ({"fault": "stream_error", "fault_after_tokens": 2}, "stream_error"),
}
FAULT_KINDS = [kind for kind in KINDS if kind != "none"]
STREAM = {"ttft_ms": 5, "itl_ms": 2}  # phase 1's answers: 4 tokens in about 11 ms
TOKENS = 4
SHORT_TOKENS = 2
TIMEOUTS = {"connect_s": 2, "first_token_s": 1.5, "total_s": 3}  # the stall (5 s) ends in a timeout
RETRY = {"max_attempts": 3}  # 429 is retried by default (retry_statuses), after its Retry-After
WORKER_KILL_AT = 0.3
DRIVER_KILL_AT = 0.6
WARM_UP = 0.1
RSS_TARGET = 0.10
MAX_RESUMES = 3
RESULT_COLUMNS = ["request_id", "attempt", "final", "status", "http_status", "segment", "worker"]


# -- processes (ours only: the CLI we started and what descends from it) -------------------------
def _read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _process_table() -> dict[int, int]:
    """pid -> parent pid of every process now."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            for line in _read(f"/proc/{name}/status").splitlines():
                if line.startswith("PPid:"):
                    parents[int(name)] = int(line.split()[1])
                    break
    return parents


def descendants(root: int) -> list[int]:
    parents = _process_table()
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def our_workers(root: int, running: bool = True) -> list[int]:
    """The replay worker actors (Ray titles them `ray::ReplayWorkerActor...`) under the CLI `root`;
    `running`: those running their share (`.run` in the title)."""
    pids = []
    for pid in descendants(root):
        title = _read(f"/proc/{pid}/cmdline").replace("\0", " ")
        if title.startswith(f"ray::{WORKER_TITLE}") and (not running or ".run" in title):
            pids.append(pid)
    return sorted(pids)


def wait_for_workers(root: int, count: int, process: subprocess.Popen, timeout_s: float = 180.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = our_workers(root)
        if len(pids) >= count:
            return pids
        if process.poll() is not None:
            raise SystemExit(f"the replay exited ({process.returncode}) before {count} workers ran")
        time.sleep(0.1)
    raise SystemExit(f"fewer than {count} replay workers after {timeout_s} s")


def alive(pid: int) -> bool:
    status = _read(f"/proc/{pid}/status")
    return bool(status) and "State:\tZ" not in status


def rss_kib(pid: int) -> int | None:
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def sleep_until(moment: float, process: subprocess.Popen) -> None:
    while time.monotonic() < moment:
        if process.poll() is not None:
            raise SystemExit(f"the replay exited ({process.returncode}) before the kill")
        time.sleep(min(0.1, max(0.0, moment - time.monotonic())))


def tail(path: Path, chars: int = 1500) -> str:
    return path.read_text(errors="replace")[-chars:]


# -- the server ------------------------------------------------------------------------------------
class Server:
    """tests/support/faulty_server.py in its own process on 127.0.0.1 (a free port)."""

    def __enter__(self) -> Server:
        command = [sys.executable, "-m", "tests.support.faulty_server", "--port", "0"]
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening on " not in line:
            raise SystemExit(f"the faulty server did not start: {line!r}")
        self.base_url = line.rsplit(" ", 1)[1].strip()
        return self

    def fault_log(self) -> dict:
        root = self.base_url.removesuffix("/v1")
        with urllib.request.urlopen(f"{root}/fault-log", timeout=120) as response:
            return json.loads(response.read())

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


# -- logs --------------------------------------------------------------------------------------------
def write_log(path: Path, ids: list[str], rate: float, params: list[str]) -> None:
    n = len(ids)
    start_us = int(datetime(2024, 5, 1, tzinfo=UTC).timestamp() * 1e6)
    arrivals = pa.array(start_us + np.round(np.arange(n) * 1e6 / rate).astype(np.int64), pa.timestamp("us", "UTC"))
    nulls = pa.nulls(n, pa.string())
    columns = {
        "request_id": pa.array(ids, pa.string()),
        "arrival_time": arrivals,
        "session_id": nulls,
        "api": pa.array(["chat"] * n, pa.string()),
        "messages": pa.array([MESSAGES] * n, pa.string()),
        "prompt": nulls,
        "params": pa.array(params, pa.string()),
        "prompt_tokens": pa.array(np.full(n, 5, np.int32)),
        "completion_tokens": pa.array(np.full(n, TOKENS, np.int32)),
        "prefix_block_ids": pa.nulls(n, pa.list_(pa.int64())),
        "tag": nulls,
        "response_text": nulls,
        "reference": nulls,
    }
    pq.write_table(pa.table(columns, schema=TRAFFIC_LOG_SCHEMA), path, row_group_size=100_000)


def fault_plan(requests: int, seed: int = 7) -> list[str]:
    """Each request's kind: FAULT_SHARE of them faulty (at random places), the kinds in turn."""
    rng = np.random.default_rng(seed)
    kinds = ["none"] * requests
    faulty = np.sort(rng.choice(requests, size=round(requests * FAULT_SHARE), replace=False))
    for turn, index in enumerate(faulty):
        kinds[int(index)] = FAULT_KINDS[turn % len(FAULT_KINDS)]
    return kinds


def phase1_log(path: Path, requests: int, rate: float) -> dict[str, str]:
    """The log; request id -> its kind. Every request carries its id as the server's fault-log tag."""
    kinds = fault_plan(requests)
    ids = [f"soak-{i:07d}" for i in range(requests)]
    params = []
    for request_id, kind in zip(ids, kinds):
        faulty = {**STREAM, **KINDS[kind][0], "tag": request_id}
        params.append(json.dumps({"max_tokens": TOKENS, "faulty": faulty}, separators=(",", ":")))
    write_log(path, ids, rate, params)
    return dict(zip(ids, kinds))


# -- results -----------------------------------------------------------------------------------------
def read_results(run_dir: Path) -> pa.Table:
    return pq.read_table(run_dir / "results", columns=RESULT_COLUMNS)


def _finals_status(table: pa.Table) -> list[str]:
    return table.filter(table.column("final")).column("status").to_pylist()


@dataclass
class Completeness:
    planned: int
    finals: int
    lost: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)
    unplanned: list[str] = field(default_factory=list)


def completeness(table: pa.Table, planned: list[str]) -> Completeness:
    """Planned requests without a final row, with more than one, and final rows of requests not planned
    (polars joins: a million ids in about a second)."""
    finals = pl.from_arrow(table.filter(table.column("final")).select(["request_id"]))
    assert isinstance(finals, pl.DataFrame)
    counts = finals.group_by("request_id").len()
    plan = pl.DataFrame({"request_id": planned})
    lost = plan.join(counts, on="request_id", how="anti").get_column("request_id").to_list()
    unplanned = counts.join(plan, on="request_id", how="anti").get_column("request_id").to_list()
    duplicated = dict(counts.filter(pl.col("len") > 1).iter_rows())
    return Completeness(len(planned), finals.height, sorted(lost), duplicated, sorted(unplanned))


def print_completeness(c: Completeness) -> bool:
    print(f"  planned requests {c.planned:,}, final rows {c.finals:,}")
    print(f"  lost final rows        {len(c.lost):>8,}   (target 0)" + (f"  e.g. {c.lost[:10]}" if c.lost else ""))
    dup = list(c.duplicated.items())[:10]
    print(f"  duplicated final rows  {len(c.duplicated):>8,}   (target 0)" + (f"  e.g. {dup}" if dup else ""))
    if c.unplanned:
        print(f"  final rows of requests not in the log: {len(c.unplanned):,}  e.g. {c.unplanned[:10]}")
    return not c.lost and not c.duplicated and not c.unplanned


def status_table(table: pa.Table, kinds: dict[str, str], fault_log: dict) -> bool:
    """Per kind: final statuses against the expected one, and against the server's fault log."""
    rows = table.to_pylist()
    finals: dict[str, str] = {}
    retried_429: set[str] = set()
    attempts_by_id: Counter[str] = Counter()
    for row in rows:
        attempts_by_id[row["request_id"]] += 1
        if row["final"]:
            finals[row["request_id"]] = row["status"]
        elif row["status"] == "http_error" and row["http_status"] == 429:
            retried_429.add(row["request_id"])
    by_tag: dict[str, list[str]] = fault_log["by_tag"]
    served = fault_log["served"]
    good = True
    print(
        f"  {'kind':<14}{'planned':>9}{'server served':>15}{'first served':>14}  {'expected':<17}"
        f"{'as expected':>12}  final statuses"
    )
    mismatches: list[str] = []
    for kind, (_, expected) in KINDS.items():
        ids = [i for i, k in kinds.items() if k == kind]
        statuses = Counter(finals.get(i, "(none)") for i in ids)
        matched = statuses.get(expected, 0)
        first_served = sum(1 for i in ids if by_tag.get(i, [None])[0] == kind)
        shown = ", ".join(f"{s} {n:,}" for s, n in statuses.most_common())
        print(
            f"  {kind:<14}{len(ids):>9,}{served.get(kind, 0):>15,}{first_served:>14,}  {expected:<17}"
            f"{matched:>12,}  {shown}"
        )
        if matched != len(ids) or first_served != len(ids):
            good = False
            wrong = [(i, finals.get(i), by_tag.get(i)) for i in ids if finals.get(i) != expected][:10]
            wrong += [(i, finals.get(i), by_tag.get(i)) for i in ids if by_tag.get(i, [None])[0] != kind][:10]
            mismatches.append(f"    {kind}: (request, final status, served by the server) e.g. {wrong[:10]}")
    ids_429 = [i for i, k in kinds.items() if k == "status_429"]
    with_retry_row = sum(1 for i in ids_429 if i in retried_429)
    print(
        f"  429 with Retry-After: {with_retry_row:,} of {len(ids_429):,} show a retried 429 row "
        f"(the others' 429 answer was cut off by a kill and resent), server served 429 {served.get('status_429', 0):,}"
        " times"
    )
    never = [i for i in kinds if i not in by_tag]
    print(f"  requests the server never saw: {len(never):,}" + (f"  e.g. {never[:10]}" if never else ""))
    resent = sum(1 for attempts in by_tag.values() if len(attempts) > 1)
    extra = sum(len(attempts) for attempts in by_tag.values()) - len(by_tag)
    more_served = [i for i, attempts in by_tag.items() if len(attempts) > attempts_by_id.get(i, 0)]
    print(
        f"  served more than once: {resent:,} requests ({extra:,} extra answers: 429 retries, and requests in"
        f" flight at a kill, resent by --resume); served more often than rows recorded: {len(more_served):,}"
        " (attempts whose rows were in the killed worker's last, uncommitted batch)"
        + (f"  e.g. {[(i, by_tag[i]) for i in more_served[:5]]}" if more_served else "")
    )
    print(f"  server: {fault_log['requests']:,} requests, served per kind {dict(sorted(served.items()))}")
    for line in mismatches:
        print(line)
    if never:
        good = False
    return good


# -- phase 1 -----------------------------------------------------------------------------------------
STARTED: list[subprocess.Popen] = []  # every CLI this script started, ended with it however it ends


def start_replay(args: list[str], out: Path) -> subprocess.Popen:
    """`shadowreplay ARGS` in its own process group (tests/support/run_processes.py), remembered."""
    process = start_cli(args, out)
    STARTED.append(process)
    return process


def stop_started() -> None:
    """SIGKILL the process group of every CLI still running (the script stopped early: Ctrl-C, an error)."""
    for process in STARTED:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_cli(args: list[str], out: Path, timeout_s: float) -> int:
    process = start_replay(args, out)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        return process.wait(timeout=120)


def phase1(work: Path, server: Server, requests: int, rate: float, workers: int) -> bool:
    print(f"phase 1: {requests:,} requests at {rate:g} req/s, {FAULT_SHARE:.0%} faulty ({', '.join(FAULT_KINDS)})")
    log, run_dir = work / "faults.parquet", work / "faults-run"
    kinds = phase1_log(log, requests, rate)
    target = write_target(work / "faulty.yaml", server.base_url, timeouts=TIMEOUTS, retry=RETRY)
    schedule_s = requests / rate
    started = time.monotonic()
    out = work / "faults-replay.txt"
    process = start_replay(
        ["replay", str(log), "--target", str(target), "-o", str(run_dir), "--workers", str(workers)], out
    )
    pids = wait_for_workers(process.pid, workers, process)
    running = time.monotonic()
    print(f"  workers running after {running - started:.1f} s: {pids}")
    sleep_until(running + WORKER_KILL_AT * schedule_s, process)
    os.kill(pids[0], signal.SIGKILL)
    print(f"  SIGKILLed worker {pids[0]} at {time.monotonic() - running:.1f} s of {schedule_s:.0f} s")
    sleep_until(running + DRIVER_KILL_AT * schedule_s, process)
    doomed = our_workers(process.pid, running=False)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    print(f"  SIGKILLed the driver {process.pid} at {time.monotonic() - running:.1f} s (its workers {doomed})")
    deadline = time.monotonic() + 90
    while any(alive(pid) for pid in doomed) and time.monotonic() < deadline:
        time.sleep(0.2)
    print(f"  its workers {'gone' if not any(alive(p) for p in doomed) else 'STILL ALIVE'} after the kill")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    before = Counter(_finals_status(read_results(run_dir)))
    print(f"  manifest status {manifest['status']}; final rows before resume {dict(before.most_common())}")
    code = None
    for attempt in range(1, MAX_RESUMES + 1):
        out = work / f"faults-resume-{attempt}.txt"
        code = run_cli(["replay", "--resume", str(run_dir)], out, timeout_s=schedule_s + 600)
        print(f"  resume {attempt}: exit {code}")
        if code != 4:
            break
    if code != 0:
        print(f"  the resume failed:\n{tail(out)}")
    wall = time.monotonic() - started
    table = read_results(run_dir)
    fault_log = server.fault_log()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    print(f"  manifest status {manifest['status']}, segments {[s['segment'] for s in manifest['segments']]}")
    good = print_completeness(completeness(table, list(kinds)))
    good = status_table(table, kinds, fault_log) and good and code == 0
    print(f"  phase 1 wall time {wall:.1f} s (schedule {schedule_s:.0f} s)")
    return good


# -- phase 2 -----------------------------------------------------------------------------------------
def phase2(work: Path, server: Server, requests: int, rate: float, workers: int) -> bool:
    print(f"phase 2: {requests:,} short requests ({SHORT_TOKENS} tokens, no delay) at {rate:g} req/s")
    log, run_dir = work / "short.parquet", work / "short-run"
    ids = [f"short-{i:07d}" for i in range(requests)]
    write_log(log, ids, rate, [json.dumps({"max_tokens": SHORT_TOKENS})] * requests)
    target = write_target(work / "short.yaml", server.base_url)
    schedule_s = requests / rate
    started = time.monotonic()
    out = work / "short-replay.txt"
    process = start_replay(
        ["replay", str(log), "--target", str(target), "-o", str(run_dir), "--workers", str(workers)], out
    )
    wait_for_workers(process.pid, workers, process)
    running = time.monotonic()
    samples: dict[str, list[tuple[float, int]]] = {}
    names = {process.pid: f"driver {process.pid}"}
    while process.poll() is None:
        now = time.monotonic() - running
        for pid in our_workers(process.pid, running=False):
            names.setdefault(pid, f"worker {pid}")
        for pid, name in names.items():
            rss = rss_kib(pid)
            if rss is not None:
                samples.setdefault(name, []).append((now, rss))
        time.sleep(1.0)
    wall = time.monotonic() - started
    code = process.returncode
    print(f"  exit {code}; wall time {wall:.1f} s (schedule {schedule_s:.0f} s)")
    good = code == 0
    if code != 0:
        print(tail(out))
    table = pq.read_table(run_dir / "results", columns=["request_id", "final", "status", "lateness_ms", "done_s"])
    final = table.filter(table.column("final"))
    statuses = Counter(final.column("status").to_pylist())
    print(f"  final statuses {dict(statuses.most_common())}")
    lateness = final.column("lateness_ms").drop_null().to_numpy()
    done = final.column("done_s").drop_null().to_numpy()
    if len(lateness) and len(done):
        p50, p99, worst = np.percentile(lateness, [50, 99, 100])
        span = float(done.max() - done.min())
        print(
            f"  send lateness p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {worst:.0f} ms;"
            f" {len(done) / span if span else 0.0:.0f} req/s done over {span:.0f} s"
        )
    good = print_completeness(completeness(table, ids)) and good and set(statuses) == {"ok"}
    warm_at = WARM_UP * schedule_s
    print(f"  RSS (MiB) after warm-up ({WARM_UP:.0%} of the schedule, {warm_at:.0f} s) and last, growth (target <10%)")
    for name, points in samples.items():
        warm = next((rss for t, rss in points if t >= warm_at), None)
        last_t, last = points[-1]
        peak = max(rss for _, rss in points)
        if warm is None:
            print(f"    {name:<16} no sample after warm-up (last at {last_t:.0f} s)")
            continue
        growth = last / warm - 1
        verdict = "ok" if growth < RSS_TARGET else "OVER"
        print(
            f"    {name:<16} {warm / 1024:8.1f} -> {last / 1024:8.1f} at {last_t:5.0f} s (peak {peak / 1024:.1f})"
            f"  {growth:+7.1%}  {verdict}"
        )
        good = good and growth < RSS_TARGET
    return good


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000, help="phase 1's requests (default 100,000)")
    parser.add_argument("--rate", type=float, default=100.0, help="phase 1's req/s (default 100)")
    parser.add_argument("--short-requests", type=int, default=1_000_000, help="phase 2's (default 1,000,000; 0: skip)")
    parser.add_argument("--short-rate", type=float, default=800.0, help="phase 2's req/s (default 800)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="keep the logs and run directories here (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch, contextlib.ExitStack() as cleanup:
        cleanup.callback(stop_started)
        work = args.workdir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        good = True
        with Server() as server:
            print(f"scripted server {server.base_url} (pid {server.process.pid})")
            if args.requests:
                good = phase1(work, server, args.requests, args.rate, args.workers) and good
        if args.short_requests:
            with Server() as server:  # a fresh server: phase 1's fault log is not carried along
                good = phase2(work, server, args.short_requests, args.short_rate, args.workers) and good
    print("soak: all targets met" if good else "soak: TARGETS MISSED")
    sys.exit(0 if good else 1)


if __name__ == "__main__":
    main()
