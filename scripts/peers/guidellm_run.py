"""GuideLLM (`guidellm run`), from PyPI into its own venv."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np

from peers.peer_tool import PeerRunFailed, PeerTool
from peers.private_venv import ensure_private_venv
from peers.tool_run import ToolRun

WORKER_PROCESSES = "1"  # its default is 10 processes; on the one core it gets, one worker is its best


class GuideLLMRun(PeerTool):
    """GuideLLM's constant profile with a request-count constraint and synthetic 32-token prompts.

    Per request it records its scheduled moment (`targeted_start`), its send (`request_start`),
    the first and last token iterations and the number of tokens: lateness is taken against its
    own schedule, TTFT is first token minus send, and, as it keeps no per-token times, ITL is the
    per-request mean (last - first) / (tokens - 1), which averages away the per-gap error.
    GuideLLM needs torch: the install is constrained to the torch build already in the vLLM
    environment (the CPU wheel) when there is one, so pip does not fetch a CUDA build.
    """

    name = "guidellm"

    def __init__(self, cpu: int, venv: Path, tokenizer: Path, torch_source_python: Path | None):
        super().__init__(cpu)
        self.venv = venv
        self.tokenizer = tokenizer
        self.torch_source_python = torch_source_python

    def _torch_constraint(self) -> list[str] | None:
        if self.torch_source_python is None or not self.torch_source_python.exists():
            return None
        probe = subprocess.run(
            [str(self.torch_source_python), "-c", "import importlib.metadata as m; print(m.version('torch'))"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return [f"torch=={probe.stdout.strip()}"] if probe.returncode == 0 else None

    def prepare(self) -> None:
        ensure_private_venv(self.venv, ["guidellm"], constraints=self._torch_constraint())

    def run(self, base_url: str, rate: float, count: int, tokens: int, workdir: Path) -> ToolRun:
        out = workdir / "guidellm.json"
        env = dict(os.environ, HF_HUB_OFFLINE="1", GUIDELLM__MAX_WORKER_PROCESSES=WORKER_PROCESSES)
        self.execute(
            [
                str(self.venv / "bin" / "guidellm"),
                "run",
                "--backend",
                f"kind=openai_http,target={base_url},model=scripted",
                "--profile",
                f"kind=constant,rate={rate:g}",
                "--constraint",
                f"kind=max_requests,count={count}",
                "--tokenizer",
                f"kind=huggingface_auto,model={self.tokenizer}",
                "--data",
                f"kind=synthetic_text,prompt_tokens=32,output_tokens={tokens}",
                "--output",
                f"kind=json,path={out}",
                "--disable-console-interactive",
            ],
            workdir,
            env,
        )
        try:
            benchmark = json.loads(out.read_text())["benchmarks"][0]
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise PeerRunFailed(f"guidellm wrote no readable report: {exc}") from None
        done = benchmark["requests"]["successful"]
        timings = [r["info"]["timings"] for r in done]
        token_counts = [max(2, (r.get("output_metrics") or {}).get("text_tokens") or tokens) for r in done]
        state = benchmark["scheduler_metrics"]
        span = state["request_end_time"] - state["request_start_time"]
        return ToolRun(
            tool=self.name,
            offered_rps=rate,
            scheduled=count,
            send_s=np.array([t["request_start"] for t in timings]),
            own_lateness_ms=np.array([(t["request_start"] - t["targeted_start"]) * 1000.0 for t in timings]),
            ttft_ms=np.array([(t["first_token_iteration"] - t["request_start"]) * 1000.0 for t in timings]),
            itl_ms=[
                np.array([(t["last_token_iteration"] - t["first_token_iteration"]) * 1000.0 / (n - 1)])
                for t, n in zip(timings, token_counts)
            ],
            failed=count - len(done),
            achieved_rps=len(done) / span if span > 0 else None,
            itl_kind="request mean",
        )
