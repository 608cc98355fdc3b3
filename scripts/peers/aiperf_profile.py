"""NVIDIA AIPerf (`aiperf profile`), from PyPI into its own venv."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from peers.peer_tool import PeerRunFailed, PeerTool
from peers.private_venv import ensure_private_venv
from peers.tool_run import ToolRun

CLOSED_LOCAL_ENDPOINT = "http://127.0.0.1:9"  # no hub here: any hub look-up fails at once


class AIPerfProfile(PeerTool):
    """AIPerf at a constant arrival rate on the completions endpoint, server token counts.

    Per request (profile_export.jsonl) it records its send time (`request_start_ns`), TTFT and the
    gaps between content chunks (`inter_chunk_latency`, one token per chunk here); it does not
    record each request's scheduled moment, so lateness is taken against the ideal grid.
    Quirks handled: with HF_HUB_OFFLINE=1 it rejects a local tokenizer path, so that variable is
    removed and HF_ENDPOINT points at a closed local port instead.
    """

    name = "aiperf"

    def __init__(self, cpu: int, venv: Path, tokenizer: Path):
        super().__init__(cpu)
        self.venv = venv
        self.tokenizer = tokenizer

    def prepare(self) -> None:
        ensure_private_venv(self.venv, ["aiperf"])

    def run(self, base_url: str, rate: float, count: int, tokens: int, workdir: Path) -> ToolRun:
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        env["HF_ENDPOINT"] = CLOSED_LOCAL_ENDPOINT
        artifacts = workdir / "artifacts"
        self.execute(
            [
                str(self.venv / "bin" / "aiperf"),
                "profile",
                "--model",
                "scripted",
                "--url",
                base_url,
                "--endpoint-type",
                "completions",
                "--streaming",
                "--request-rate",
                f"{rate:g}",
                "--arrival-pattern",
                "constant",
                "--request-count",
                str(count),
                "--isl",
                "32",
                "--osl",
                str(tokens),
                "--tokenizer",
                str(self.tokenizer),
                "--use-server-token-count",
                "--ui-type",
                "none",
                "--no-gpu-telemetry",
                "--artifact-dir",
                str(artifacts),
            ],
            workdir,
            env,
        )
        try:
            summary = json.loads((artifacts / "profile_export_aiperf.json").read_text())
            records = [
                json.loads(line) for line in (artifacts / "profile_export.jsonl").read_text().splitlines() if line
            ]
        except (OSError, ValueError) as exc:
            raise PeerRunFailed(f"aiperf wrote no readable export: {exc}") from None
        ok = [r for r in records if "error" not in r and "time_to_first_token" in r.get("metrics", {})]
        return ToolRun(
            tool=self.name,
            offered_rps=rate,
            scheduled=count,
            send_s=np.array([r["metadata"]["request_start_ns"] / 1e9 for r in ok]),
            own_lateness_ms=np.full(len(ok), np.nan),
            ttft_ms=np.array([r["metrics"]["time_to_first_token"]["value"] for r in ok]),
            itl_ms=[np.array(r["metrics"].get("inter_chunk_latency", {}).get("value", [])) for r in ok],
            failed=count - len(ok),
            achieved_rps=(summary.get("request_throughput") or {}).get("avg"),
        )
