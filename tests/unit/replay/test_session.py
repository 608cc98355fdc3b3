"""The Session (replay/run/session.py): keys read once, and the manifest written on every exit,
with how the run ended and every secret removed. No Ray and no local server here: those paths run
in the integration tests (replay, sweep, locust). The target is a scripted server that listens, as
the Session's endpoint check asks (its failures: tests/unit/replay/test_preflight.py)."""

from __future__ import annotations

import json

import pytest

from shadowreplay.replay.run.session import Session
from shadowreplay.replay.schemas.run_dir import RunDir
from shadowreplay.replay.targets.config import TargetConfigError, load_target
from tests.support.faulty_server import FaultyServer
from tests.support.server_thread import ServerThread

KEY = "sk-session-canary-0123456789"


@pytest.fixture(scope="module")
def server_url():
    with ServerThread(FaultyServer()) as server:
        yield server.base_url


@pytest.fixture
def target(tmp_path, monkeypatch, server_url):
    def make():
        monkeypatch.setenv("SR_SESSION_KEY", KEY)
        path = tmp_path / "t.yaml"
        path.write_text(f"name: t\nkind: openai\nbase_url: {server_url}\nmodel: m\napi_key_env: SR_SESSION_KEY\n")
        return load_target(path)

    return make


def manifest_of(run_dir: RunDir) -> dict:
    return json.loads(run_dir.manifest_path.read_text())


def test_a_completed_run_writes_its_manifest(tmp_path, target):
    run_dir = RunDir(tmp_path / "run")
    with Session([target()], run_dir, use_ray=False) as session:
        session.manifest.run_id = "r1"
    manifest = manifest_of(run_dir)
    assert manifest["run_id"] == "r1" and manifest["status"] == "completed" and manifest["error"] is None
    assert manifest["targets"][0]["api_key_env"] == "SR_SESSION_KEY"
    assert manifest["started_at"] <= manifest["ended_at"]


def test_a_failed_run_still_writes_its_manifest_without_the_key(tmp_path, target):
    run_dir = RunDir(tmp_path / "run")
    with pytest.raises(RuntimeError), Session([target()], run_dir, use_ray=False):
        raise RuntimeError(f"upstream said: Authorization: Bearer {KEY}")
    manifest = manifest_of(run_dir)
    assert manifest["status"] == "failed" and "RuntimeError: upstream said" in manifest["error"]
    assert KEY not in run_dir.manifest_path.read_text() and "[redacted]" in manifest["error"]


def test_ctrl_c_is_recorded_as_interrupted(tmp_path, target):
    run_dir = RunDir(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt), Session([target()], run_dir, use_ray=False):
        raise KeyboardInterrupt
    assert manifest_of(run_dir)["status"] == "interrupted"


def test_a_key_that_cannot_be_read_stops_before_anything_starts(tmp_path, monkeypatch, target):
    config = target()
    monkeypatch.delenv("SR_SESSION_KEY")
    run_dir = RunDir(tmp_path / "run")
    with pytest.raises(TargetConfigError, match="SR_SESSION_KEY, which is not set"):
        with Session([config], run_dir, use_ray=False):
            pytest.fail("the session must not start")
    assert not run_dir.path.exists()


def test_a_manifest_written_by_another_process_is_completed_not_replaced(tmp_path, target):
    run_dir = RunDir(tmp_path / "run")
    with Session([target()], run_dir, use_ray=False, external_manifest=True):
        run_dir.path.mkdir(parents=True)
        run_dir.manifest_path.write_text(json.dumps({"run_id": "locust-run", "load_generator": {"tool": "locust"}}))
    manifest = manifest_of(run_dir)
    assert manifest["run_id"] == "locust-run" and manifest["load_generator"] == {"tool": "locust"}
    assert manifest["status"] == "completed" and manifest["servers"] == []
