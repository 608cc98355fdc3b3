"""`shadowreplay capture`'s mistakes are one line each, before anything listens or is written."""

from __future__ import annotations

import socket

import pytest

from shadowreplay.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "8080"], "--listen '8080': expected HOST:PORT"),
        (["--listen", "127.0.0.1:99999"], "expected HOST:PORT"),
        (["--upstream", "vllm:8000"], "--upstream 'vllm:8000': expected an http:// or https:// URL"),
        (["--rotate", "soon"], "--rotate 'soon': expected a time"),
        (["--sample", "0"], "--sample 0: a fraction in (0, 1]"),
        (["--session-header", "Authorization"], "Authorization carries the client's credentials"),
        (["--redact", "none", "--tokenizer", "tok"], "--tokenizer guides redaction"),
        (["--redact", "missing.yaml"], "missing.yaml"),
    ],
)
def test_bad_options_are_one_line(tmp_path, capsys, args, message):
    base = {"--listen": "127.0.0.1:1", "--upstream": "http://127.0.0.1:2", "-o": str(tmp_path / "log")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["capture", *(part for flag, value in base.items() for part in (flag, value))]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "log").exists() or not any((tmp_path / "log").glob("*.parquet"))


def test_a_port_in_use_is_one_line(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(
            ["capture", "--listen", f"127.0.0.1:{port}", "--upstream", "http://127.0.0.1:2", "-o", str(tmp_path)]
        )
    err = capsys.readouterr().err
    assert code != 0 and f"--listen 127.0.0.1:{port}:" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written by a capture that never listened


def test_a_directory_another_capture_holds_is_one_line(tmp_path, capsys):
    from shadowreplay.replay.capture.recorder import CaptureLog, Rotation

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    holder = CaptureLog(tmp_path, Rotation())
    try:
        code = main(
            ["capture", "--listen", f"127.0.0.1:{port}", "--upstream", "http://127.0.0.1:2", "-o", str(tmp_path)]
        )
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert code != 0 and "another capture is writing this directory" in err and "Traceback" not in err, err
