"""scripts/bench_telemetry.py, run for 2 s: the samplers really sampled, every scrape answered, and the
figures it prints (text and --json) are consistent CPU shares. Loopback only, bounded in time."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.support.paths import SCRIPTS

SCRIPT = SCRIPTS / "bench_telemetry.py"
TIMEOUT_S = 150  # 2 s of baseline, samplers and replay, plus the start-up of four Python processes


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "2", "--gpus", "4", "--servers", "3", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _consistent(entry: dict) -> None:
    assert entry["wall_s"] > 0 and entry["cpu_s"] >= 0
    assert entry["pct_of_core"] == pytest.approx(100 * entry["cpu_s"] / entry["wall_s"])


def test_json_figures_come_from_real_sampling():
    result = json.loads(_run("--json"))
    nvml, prom, replay = result["nvml"], result["prometheus"], result["replay_worker"]
    for entry in (result["baseline_idle"], nvml, prom, result["both_process_above_idle"], replay):
        _consistent(entry)
    assert result["target_pct_of_core"] == 1.0
    for entry in (nvml, prom, result["both_process_above_idle"]):
        assert entry["pass"] == (entry["pct_of_core"] < 1.0)

    assert nvml["gpus"] == 4 and nvml["nvml"] == "in-process stand-in" and not nvml["errors"]
    assert 10 <= nvml["rounds"] + nvml["late_ticks"] <= 30  # 10 Hz for ~2 s
    assert nvml["rows_written"] == nvml["rounds"] * 4 * 10  # 10 metrics per GPU per round
    assert nvml["cpu_s"] > 0

    assert prom["servers"] == 3 and prom["scrapes"] == {"ok": 3 * prom["rounds"]} and prom["rounds"] >= 2
    assert prom["page"]["lines"] > 400  # a vLLM-sized page, not a toy
    assert prom["rows_written"] > 3 * prom["rounds"] * 40  # the kept series: gauges, counters, two histograms
    assert prom["cpu_s"] > 0

    # the process's own CPU above idle holds both samplers' threads (up to timer granularity)
    assert result["both_process_above_idle"]["cpu_s"] >= 0.8 * (nvml["cpu_s"] + prom["cpu_s"]) - 0.01
    assert replay["by_status"] == {"ok": replay["requests"]} and replay["requests"] == 40  # 20 req/s x 2 s
    assert replay["output_tokens_per_s"] > 0 and replay["process_cpu_s_with_startup"] > replay["cpu_s"] > 0
    share = 100 * (nvml["pct_of_core"] + prom["pct_of_core"]) / replay["pct_of_core"]
    assert result["telemetry_pct_of_replay_worker_cpu"] == pytest.approx(share)


def test_text_output_names_each_figure_with_its_verdict():
    text = _run()
    for label in ("NVML 10 Hz x 4 GPUs", "Prometheus 1 Hz x 3 servers", "both, whole process above idle"):
        line = next(line for line in text.splitlines() if label in line)
        assert re.search(r"\d+\.\d{3}% of a core  (PASS|FAIL)", line), line
    assert re.search(r"replay worker: 20 req/s x 64 tokens\s+\d+\.\d{3}% of a core", text), text
    assert re.search(r"telemetry \(NVML \+ Prometheus threads\) = \d+\.\d% of the replay worker's CPU use", text)
