"""What the benchmarks that time whole processes share: a child run as users run it, timed from
outside (wall time around it, its peak resident memory from the kernel's accounting of that one
child, `os.wait4`), and the launcher of the console script beside this interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI_MAIN = "import sys; from shadowreplay.cli import main; sys.exit(main())"


def run_child(command: list[str], ok_codes: tuple[int, ...] = (0,)) -> tuple[float, float, str]:
    """Run `command` in a fresh process with this checkout first on its path: (wall seconds, peak RSS
    MiB, stdout). A child that fails (an exit status not in `ok_codes`) ends the benchmark."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryFile(mode="w+") as stdout:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=stdout, cwd=REPO, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        if code not in ok_codes:
            raise SystemExit(f"benchmark child {command[:3]} failed with exit status {code}")
        stdout.seek(0)
        return wall, usage.ru_maxrss / 1024, stdout.read()  # Linux reports KiB


def cli(*args: str) -> list[str]:
    """`shadowreplay ARGS` as a command: the console script beside this interpreter, else `python -c`."""
    script = Path(sys.executable).with_name("shadowreplay")
    launcher = [str(script)] if script.is_file() else [sys.executable, "-c", CLI_MAIN]
    return [*launcher, *args]
