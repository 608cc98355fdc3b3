"""Where the load generator runs: the CPU split beside a local server, and the priority it asks for."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import pytest

from shadowreplay.errors import UserError
from shadowreplay.replay.run.cpu_placement import (
    CpuPlacement,
    ProcessPriority,
    cpu_list,
    descendant_processes,
    process_cpus,
)
from shadowreplay.replay.run.progress_display import behind_line
from shadowreplay.replay.run.running_sketch import ProgressSnapshot, RunningSketch
from shadowreplay.replay.targets.vllm_server import OMP_BIND_ENV, VllmServer
from shadowreplay.verbs.worker_options import cpu_ids


def test_cpu_lists_are_written_as_linux_and_vllm_read_them():
    assert cpu_list([0]) == "0"
    assert cpu_list([3, 1, 2]) == "1-3"
    assert cpu_list([0, 2, 3, 4, 7]) == "0,2-4,7"


@pytest.mark.parametrize(
    ("cpus", "loadgen", "server"),
    [([0, 1], [0], [1]), (list(range(16)), [0, 1, 2, 3], list(range(4, 16))), ([2, 5, 6], [2], [5, 6])],
)
def test_a_local_server_and_local_workers_get_separate_cpus(cpus, loadgen, server):
    placement = CpuPlacement.plan(cpus, local_server=True, local_workers=True)
    assert placement.loadgen_cpus == loadgen and placement.server_cpus == server
    assert set(placement.loadgen_cpus).isdisjoint(placement.server_cpus)
    assert cpu_list(server) in placement.reason


@pytest.mark.parametrize(
    ("cpus", "local_server", "local_workers", "why"),
    [
        ([0, 1], False, True, "no local server"),
        ([0, 1], True, False, "joined cluster"),
        ([0], True, True, "one usable CPU"),
    ],
)
def test_nothing_is_split_where_it_cannot_help(cpus, local_server, local_workers, why):
    placement = CpuPlacement.plan(cpus, local_server=local_server, local_workers=local_workers)
    assert placement.loadgen_cpus is None and placement.server_cpus is None
    assert why in placement.reason


@pytest.mark.parametrize(
    ("cpus", "chosen", "local_server", "server", "ray"),
    [
        ([0, 1], [0], False, None, [1]),
        ([0, 1], [1], True, [0], [0]),
        (list(range(8)), [2, 3], True, [0, 1, 4, 5, 6, 7], [0, 1, 4, 5, 6, 7]),
        ([0, 1], [0, 1], False, None, None),  # every CPU for the workers: Ray beside them
    ],
)
def test_chosen_worker_cpus_give_ray_and_a_local_server_the_rest(cpus, chosen, local_server, server, ray):
    placement = CpuPlacement.plan(cpus, local_server=local_server, local_workers=True, worker_cpus=chosen)
    assert placement.loadgen_cpus == chosen and placement.server_cpus == server and placement.ray_cpus == ray
    assert "--worker-cpus" in placement.reason


@pytest.mark.parametrize(
    ("chosen", "local_server", "local_workers", "says"),
    [
        ([4], False, True, "CPU 4 is not one this process may use (usable: 0-1)"),
        ([0, 1], True, True, "leaves no CPU for the local vLLM server"),
        ([0], False, False, "with --address they run on the cluster's nodes"),
    ],
)
def test_worker_cpus_that_cannot_be_kept_are_refused_with_the_reason(chosen, local_server, local_workers, says):
    with pytest.raises(UserError, match=re.escape(says)):
        CpuPlacement.plan([0, 1], local_server=local_server, local_workers=local_workers, worker_cpus=chosen)


def test_the_worker_cpus_option_reads_linux_cpu_lists():
    assert cpu_ids("0") == [0] and cpu_ids("3,1-2") == [1, 2, 3] and cpu_ids("0, 2-3") == [0, 2, 3]
    for bad in ("", "a", "3-1", "-1", "1-"):
        with pytest.raises(argparse.ArgumentTypeError, match="CPU"):
            cpu_ids(bad)


def test_the_processes_this_one_started_are_found_with_their_cpus():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        facts = {p["pid"]: p for p in process_cpus(descendant_processes())}
        assert child.pid in facts and facts[child.pid]["cpus"] == sorted(os.sched_getaffinity(child.pid))
        assert os.getpid() not in facts
    finally:
        child.kill()
        child.wait()


def test_the_server_is_bound_to_its_cpus_unless_the_target_says_otherwise():
    server = VllmServer(model="m", python=sys.executable, cpus=[3, 1, 2])
    assert server.explicit_env()[OMP_BIND_ENV] == "1-3"
    own = VllmServer(model="m", python=sys.executable, cpus=[1], env={OMP_BIND_ENV: "nobind"})
    assert own.explicit_env()[OMP_BIND_ENV] == "nobind"
    assert OMP_BIND_ENV not in VllmServer(model="m", python=sys.executable).explicit_env()


RAISE = """
import json, os, threading
from shadowreplay.replay.run.cpu_placement import ProcessPriority
os.nice(7)
started, done = threading.Event(), threading.Event()
other = threading.Thread(target=lambda: (started.set(), done.wait()))  # made before the raise: at nice 7
other.start()
started.wait()
cpus = sorted(os.sched_getaffinity(0))[:1]
facts = ProcessPriority.raise_to(cpus=cpus)
tid = other.native_id
thread = {"nice": os.getpriority(os.PRIO_PROCESS, tid), "cpus": sorted(os.sched_getaffinity(tid))}
done.set()
print(json.dumps({"facts": facts.model_dump(), "other_thread": thread}))
"""


CAP_SYS_NICE = 23  # its bit in the capability masks of /proc/self/status


def has_cap_sys_nice() -> bool:
    for line in open("/proc/self/status"):
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_NICE & 1)
    return os.geteuid() == 0


def test_a_process_below_the_load_generators_priority_is_raised_or_says_why_not():
    out = json.loads(subprocess.run([sys.executable, "-c", RAISE], capture_output=True, text=True, check=True).stdout)
    facts = ProcessPriority.model_validate(out["facts"])
    assert facts.nice_at_start == os.getpriority(os.PRIO_PROCESS, 0) + 7 and len(facts.cpus) == 1
    assert out["other_thread"]["cpus"] == facts.cpus, "Linux pins per thread: every thread is pinned"
    if has_cap_sys_nice():  # raised to the load generator's priority, and pinned
        assert facts.nice == 0 and facts.refused is None and facts.warning("w") is None
        assert out["other_thread"]["nice"] == 0, "Linux keeps nice per thread: every thread is raised"
    else:  # the kernel refused: kept, recorded and said, never hidden
        assert facts.nice == facts.nice_at_start and facts.refused is not None
        line = facts.warning("w")
        assert line is not None and f"nice {facts.nice}" in line


def test_a_refused_raise_is_recorded_and_said(monkeypatch):
    monkeypatch.setattr(os, "getpriority", lambda which, who: 15)

    def refuse(which, who, value):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    facts = ProcessPriority.raise_to()
    assert facts.nice_at_start == 15 and facts.nice == 15
    assert facts.refused is not None and "Operation not permitted" in facts.refused
    line = facts.warning("a replay worker")
    assert line is not None and "nice 15" in line and "RAY_worker_niceness=0" in line


def test_the_live_sketch_reports_lateness_and_warns_when_behind():
    few = RunningSketch(scheduled=300)
    for _ in range(50):
        few.on_first_send(80.0)
    assert few.snapshot().lateness_p99_ms == 80.0 and behind_line(few.snapshot()) is None  # too few sends to say
    sketch = RunningSketch(scheduled=300)
    for _ in range(200):
        sketch.on_first_send(1.0)
    on_time = sketch.snapshot()
    assert on_time.lateness_p99_ms == pytest.approx(1.0) and behind_line(on_time) is None
    for _ in range(10):
        sketch.on_first_send(80.0)
    late = ProgressSnapshot.combine([sketch.snapshot(), on_time])
    assert late.lateness_p99_ms is not None and late.lateness_p99_ms > 10
    line = behind_line(late)
    assert line is not None and "not offered as recorded" in line
