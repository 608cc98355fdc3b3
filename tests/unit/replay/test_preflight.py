"""The pre-flight checks (replay/targets/preflight.py) over real HTTP on 127.0.0.1: nothing listening,
a server that listens, one that refuses the key, one that is unwell, one that never answers; and the
tokenizers: a path that does not exist (refused when the file is loaded) and a directory that does not
load (refused before anything starts). Through the CLI, a failure is one line per target and nothing
is scheduled: no Ray, no result shard."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from shadowreplay.cli import main
from shadowreplay.replay.run.session import Session
from shadowreplay.replay.schemas.run_dir import RunDir
from shadowreplay.replay.targets.config import TargetConfig, TargetConfigError, load_target
from shadowreplay.replay.targets.preflight import (
    EndpointCheck,
    EndpointCheckError,
    check_endpoints,
    check_tokenizers,
)
from tests.support.faulty_server import FaultyServer
from tests.support.server_thread import ServerThread
from tests.support.status_server import StatusServer, closed_port, hanging_listener
from tests.support.target_files import write_target
from tests.support.traffic_logs import log_row, write_log

KEY = "sk-preflight-canary-0123456789abcdef"


def openai(name: str, *urls: str, **fields) -> TargetConfig:
    where = {"base_url": urls[0]} if len(urls) == 1 else {"endpoints": list(urls)}
    return TargetConfig(name=name, kind="openai", model="m", **where, **fields)


def test_a_listening_server_passes_and_is_asked_for_its_models():
    with ServerThread(StatusServer(200)) as server:
        assert check_endpoints([openai("up", server.base_url + "/v1")]) == []
    (asked,) = server.server.asked
    assert (asked.method, asked.path_qs) == ("GET", "/v1/models")


def test_nothing_listening_is_one_line_naming_the_target_and_the_url():
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(EndpointCheckError) as raised:
        check_endpoints([openai("gone", dead)])
    (line,) = str(raised.value).splitlines()
    assert line.startswith(f"target gone: {dead}: ") and "Cannot connect" in line


def test_only_the_replicas_that_do_not_answer_are_named_one_line_each():
    dead = [f"http://127.0.0.1:{closed_port()}/v1" for _ in range(2)]
    with ServerThread(FaultyServer()) as live:
        with pytest.raises(EndpointCheckError) as raised:
            check_endpoints([openai("fleet", live.base_url, *dead), openai("single", live.base_url)])
    lines = str(raised.value).splitlines()
    assert [line.split(": ")[:2] for line in lines] == [["target fleet", url] for url in dead]


def test_a_refused_key_fails_naming_its_variable_never_the_key(monkeypatch):
    monkeypatch.setenv("SR_PREFLIGHT_KEY", KEY)
    with ServerThread(
        StatusServer(401, body=json.dumps({"error": {"message": f"bad key {KEY[:12]}...{KEY[-4:]}"}}))
    ) as s:
        targets = [
            openai("oa", s.base_url + "/v1", api_key_env="SR_PREFLIGHT_KEY"),
            TargetConfig(
                name="claude", kind="anthropic", base_url=s.base_url, model="m", api_key_env="SR_PREFLIGHT_KEY"
            ),
            TargetConfig(
                name="az",
                kind="azure_openai",
                base_url=s.base_url,
                model="m",
                api_key_env="SR_PREFLIGHT_KEY",
                azure={"api_version": "2024-10-21"},
            ),
        ]
        with pytest.raises(EndpointCheckError) as raised:
            check_endpoints(targets)
    message = str(raised.value)
    assert len(message.splitlines()) == 3 and KEY not in message and KEY[-4:] not in message
    assert all("HTTP 401" in line and "api_key_env SR_PREFLIGHT_KEY" in line for line in message.splitlines())
    # Each kind was asked where its API lists models, with the key in its protocol's own header.
    asked = s.server.asked
    bearer = [a for a in asked if a.headers.get("Authorization") == f"Bearer {KEY}"]
    assert [a.path_qs for a in bearer] == ["/v1/models"]
    claude = [a for a in asked if a.headers.get("x-api-key") == KEY]
    assert [a.path_qs for a in claude] == ["/v1/models"] and claude[0].headers["anthropic-version"] == "2023-06-01"
    azure = [a for a in asked if a.headers.get("api-key") == KEY]
    assert [a.path_qs for a in azure] == ["/openai/models?api-version=2024-10-21"]
    assert {a.method for a in asked} == {"GET"}
    assert KEY not in repr(EndpointCheck.for_target(targets[0], targets[0].replica_urls[0], KEY))


def test_a_server_that_wants_a_key_the_target_does_not_give_says_so():
    with ServerThread(StatusServer(403)) as server:
        with pytest.raises(EndpointCheckError, match=r"HTTP 403 .*target gives none \(api_key_env or api_key_file\)"):
            check_endpoints([openai("open", server.base_url + "/v1")])


@pytest.mark.parametrize("status", [404, 405, 429])
def test_any_other_answer_proves_it_listens(status):
    with ServerThread(StatusServer(status)) as server:
        assert check_endpoints([openai("gateway", server.base_url + "/v1")]) == []


def test_an_unwell_server_passes_with_a_warning():
    with ServerThread(StatusServer(503)) as server:
        (warning,) = check_endpoints([openai("sick", server.base_url + "/v1")])
    assert warning.startswith(f"target sick: {server.base_url}/v1: ") and "HTTP 503" in warning


def test_servers_that_never_answer_time_out_side_by_side():
    listeners = [hanging_listener() for _ in range(3)]
    try:
        targets = [openai(f"hung{i}", f"http://127.0.0.1:{s.getsockname()[1]}/v1") for i, s in enumerate(listeners)]
        started = time.monotonic()
        with pytest.raises(EndpointCheckError) as raised:
            check_endpoints(targets, timeout_s=0.5)
        assert time.monotonic() - started < 1.4  # at once, not one after another
    finally:
        for listener in listeners:
            listener.close()
    lines = str(raised.value).splitlines()
    assert len(lines) == 3 and all("no HTTP answer within 0.5 s" in line for line in lines)


def test_a_session_checks_its_targets_and_prints_warnings(tmp_path, capsys):
    with ServerThread(StatusServer(502)) as server:
        target = load_target(write_target(tmp_path / "t.yaml", server.base_url + "/v1"))
        with Session([target], RunDir(tmp_path / "run"), use_ray=False):
            pass
    assert "WARNING: target faulty:" in capsys.readouterr().out


def test_a_replay_against_nothing_fails_in_one_line_before_any_request(tmp_path, capsys):
    import ray

    dead = f"http://127.0.0.1:{closed_port()}/v1"
    target = write_target(tmp_path / "t.yaml", dead)
    log = write_log(tmp_path / "log.parquet", [log_row(i, 0.1 * i) for i in range(3)])
    run = tmp_path / "run"
    was_running = ray.is_initialized()
    assert main(["replay", str(log), "--target", str(target), "-o", str(run)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"shadowreplay replay: target faulty: {dead}: ")
    assert ray.is_initialized() == was_running
    assert not list(run.rglob("*.parquet"))  # no result shard: nothing was scheduled
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "EndpointCheckError" in manifest["error"]


# ---- tokenizers ---------------------------------------------------------------------------------


def test_a_tokenizer_path_that_does_not_exist_is_one_line_when_the_file_is_loaded(tmp_path):
    for given, shown in [(str(tmp_path / "absent"), str(tmp_path / "absent")), ("./absent", str(tmp_path / "absent"))]:
        path = write_target(tmp_path / "t.yaml", "http://127.0.0.1:9/v1", tokenizer=given)
        with pytest.raises(TargetConfigError) as raised:
            load_target(path)
        (line,) = str(raised.value).splitlines()
        assert line.startswith(f"{path}: tokenizer: {shown} does not exist")
    (tmp_path / "file").write_text("")
    with pytest.raises(TargetConfigError, match=r"tokenizer: .*file is not a directory"):
        load_target(write_target(tmp_path / "t.yaml", "http://127.0.0.1:9/v1", tokenizer="./file"))


def broken_tokenizer(tmp_path: Path, tiny_model_dir: Path) -> Path:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text('{"version": "1.0", "model": {')  # cut off
    (broken / "tokenizer_config.json").write_text((tiny_model_dir / "tokenizer_config.json").read_text())
    return broken


def test_a_tokenizer_that_does_not_load_is_one_line_per_target(tmp_path, tiny_model_dir):
    broken = broken_tokenizer(tmp_path, tiny_model_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    files = [
        write_target(tmp_path / "a.yaml", "http://127.0.0.1:9/v1", tokenizer=str(broken)),
        write_target(tmp_path / "b.yaml", "http://127.0.0.1:9/v1", tokenizer=str(empty)),
        write_target(tmp_path / "c.yaml", "http://127.0.0.1:9/v1", tokenizer=str(tiny_model_dir)),
    ]
    with pytest.raises(TargetConfigError) as raised:
        check_tokenizers([load_target(f) for f in files])
    first, second = str(raised.value).splitlines()
    assert first.startswith(f"{files[0]}: tokenizer: {broken}: cannot load the tokenizer")
    assert second.startswith(f"{files[1]}: tokenizer: {empty}: no tokenizer.json")
    check_tokenizers([load_target(files[2])])  # the real one loads


def test_a_replay_with_a_broken_tokenizer_fails_in_one_line_before_anything_starts(tmp_path, tiny_model_dir, capsys):
    with ServerThread(FaultyServer()) as live:
        target = write_target(
            tmp_path / "t.yaml", live.base_url, tokenizer=str(broken_tokenizer(tmp_path, tiny_model_dir))
        )
        log = write_log(tmp_path / "log.parquet", [log_row(0, 0.0)])
        assert main(["replay", str(log), "--target", str(target), "-o", str(tmp_path / "run")]) == 2
        assert live.server.requests_seen == 0
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"shadowreplay replay: {target}: tokenizer: ") and "cannot load the tokenizer" in line
