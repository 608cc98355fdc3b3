"""A peer tool's own Python environment, created with pip on first use and reused after."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from peers.peer_tool import PeerUnavailable

INSTALL_TIMEOUT_S = 900.0
READY_MARK = ".bench-ready"


def ensure_private_venv(directory: Path, requirements: list[str], constraints: list[str] | None = None) -> Path:
    """The python of the venv at `directory` with `requirements` installed (created when missing
    or incomplete). `constraints` (pip constraint lines, e.g. a torch build already on this machine)
    are tried first; if pip cannot satisfy them, the install is retried without them.
    Raises PeerUnavailable with pip's last lines when the install fails."""
    python = directory / "bin" / "python"
    mark = directory / READY_MARK
    wanted = "\n".join(requirements)
    if python.exists() and mark.exists() and mark.read_text() == wanted:
        return python
    print(f"  installing {' '.join(requirements)} into {directory} (first run only) ...", flush=True)
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True, capture_output=True, timeout=120)
        attempts = [constraints, None] if constraints else [None]
        failure = ""
        for attempt in attempts:
            command = [str(python), "-m", "pip", "install", "-q", *requirements]
            if attempt:
                constraint_file = directory / "bench-constraints.txt"
                constraint_file.write_text("\n".join(attempt) + "\n")
                command += ["--constraint", str(constraint_file)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
            if done.returncode == 0:
                mark.write_text(wanted)
                return python
            lines = [line for line in done.stderr.splitlines() if not line.startswith("WARNING: Location")]
            failure = " | ".join(lines[-4:])
    except (subprocess.SubprocessError, OSError) as exc:
        raise PeerUnavailable(f"cannot create {directory}: {exc}") from None
    raise PeerUnavailable(f"pip install {' '.join(requirements)} failed: {failure}")
