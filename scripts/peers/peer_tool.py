"""The interface of a peer load generator, and its two ways of failing."""

from __future__ import annotations

import subprocess
from abc import ABC, abstractmethod
from pathlib import Path

from peers.tool_run import ToolRun

OUTPUT_TAIL_CHARS = 600


class PeerUnavailable(RuntimeError):
    """The tool cannot be installed or started here; the message says why."""


class PeerRunFailed(RuntimeError):
    """One run of the tool failed; the message says why."""


class PeerTool(ABC):
    """A load generator driven through its command line, pinned to the benchmark's client core."""

    name: str

    def __init__(self, cpu: int):
        self.cpu = cpu

    @abstractmethod
    def prepare(self) -> None:
        """Install or locate the tool; raise PeerUnavailable with the reason when it cannot run."""

    @abstractmethod
    def run(self, base_url: str, rate: float, count: int, tokens: int, workdir: Path) -> ToolRun:
        """Send `count` requests at a constant `rate` asking `tokens` output tokens each to the
        OpenAI-compatible server at `base_url` (no /v1); raise PeerRunFailed when the run fails."""

    def execute(
        self, argv: list[str], workdir: Path, env: dict[str, str] | None = None, timeout_s: float = 240.0
    ) -> str:
        """Run the tool pinned to `self.cpu`; its output goes to workdir/<name>.log. Returns the output."""
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / f"{self.name}.log"
        try:
            done = subprocess.run(
                ["taskset", "-c", str(self.cpu), *argv],
                cwd=workdir,
                env=env,
                timeout=timeout_s,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        except subprocess.TimeoutExpired:
            raise PeerRunFailed(f"{self.name} did not finish within {timeout_s:g} s") from None
        except OSError as exc:
            raise PeerRunFailed(f"{self.name} could not start: {exc}") from None
        log.write_text(done.stdout)
        if done.returncode != 0:
            tail = done.stdout[-OUTPUT_TAIL_CHARS:].strip().replace("\n", " | ")
            raise PeerRunFailed(f"{self.name} exited with {done.returncode} (log {log}): ...{tail}")
        return done.stdout
