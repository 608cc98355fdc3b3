"""The processes of a replay run as a user's shell sees them (Linux /proc): the CLI started as a
user starts it, its Ray worker actors found by their process titles, and signals sent to them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-c", "import sys; from shadowreplay.cli import main; sys.exit(main(sys.argv[1:]))"]
WORKER_TITLE = "ReplayWorkerActor"


LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, what: str = "the process", timeout_s: float = 60.0) -> None:
    """Return once `process` listens on 127.0.0.1:`port`; RuntimeError if it exits first or takes too long."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited (status {process.returncode}) before it listened on {port}")
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} not listening on {port} after {timeout_s:g} s")


def start_cli(args: list[str], log: Path) -> subprocess.Popen:
    """`shadowreplay ARGS` in its own process group (as a shell runs it), output into `log`."""
    out = log.open("w")
    return subprocess.Popen([*CLI, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def worker_pids() -> list[int]:
    """Every live replay worker actor process on this host (Ray titles them `ray::ReplayWorkerActor...`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _cmdline(int(entry.name)).startswith(f"ray::{WORKER_TITLE}"):
            pids.append(int(entry.name))
    return sorted(pids)


def wait_for_workers(count: int, timeout_s: float = 120.0, running: bool = True) -> list[int]:
    """The pids of `count` worker actors once they exist (`running`: once they run their share)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = [p for p in worker_pids() if not running or ".run" in _cmdline(p)]
        if len(pids) >= count:
            return pids
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} replay workers after {timeout_s} s: {worker_pids()}")


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    os.kill(pid, sig)
