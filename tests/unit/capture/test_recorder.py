"""The capture recorder (replay/capture/recorder.py) on a real directory: parts committed on the flush
timer and merged at rotation, the directory a whole traffic log at every moment, a crashed capture's
leftovers merged or tidied by the next, one capture per directory, redaction before anything reaches
a file, sampling by session, and drops counted (never a wait) when the recorder falls behind."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from shadowreplay.replay.capture.exchange import CAPTURE_COLUMNS, CapturedExchange
from shadowreplay.replay.capture.recorder import (
    CAPTURE_SCHEMA,
    CaptureError,
    CaptureLog,
    CaptureRecorder,
    Rotation,
    public_upstream,
)
from shadowreplay.replay.capture.redaction import Redactor
from shadowreplay.replay.run.plan import select_rows
from shadowreplay.replay.schemas.shadow_requests import shadow_requests
from shadowreplay.replay.schemas.traffic_log import log_files, open_traffic_log

EMAIL = "somchai.jaidee@example.co.th"
CARD = "4111 1111 1111 1111"


def row(i: int, session: str | None = None) -> dict:
    return {
        "request_id": f"r{i}",
        "arrival_time": 1_700_000_000_000_000 + i * 1000,
        "session_id": session,
        "api": "chat",
        "messages": json.dumps([{"role": "user", "content": f"question {i}"}]),
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "prod_ttft_ms": 12.5,
        "prod_e2e_ms": 40.0,
        "prod_status": "ok",
        "prod_http_status": 200,
    }


def finished_exchange(i: int, content: str, answer: str, session: str | None = None) -> CapturedExchange:
    body = {"model": "m", "messages": [{"role": "user", "content": content}], "user": session, "max_tokens": 8}
    found = CapturedExchange(
        "/v1/chat/completions",
        {"x-request-id": f"r{i}"},
        json.dumps(body).encode(),
        arrival_us=1_700_000_000_000_000 + i,
        received_s=10.0,
    )
    found.response_started(200, "application/json")
    reply = {"choices": [{"message": {"content": answer}}], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}
    found.feed(json.dumps(reply).encode(), 10.1)
    found.finish(10.1)
    return found


def test_rotation_spellings():
    assert Rotation.parse("10min") == Rotation(every_s=600.0)
    assert Rotation.parse("1h").every_s == 3600.0 and Rotation.parse("30s").every_s == 30.0
    assert Rotation.parse("1.5m").every_s == 90.0
    assert Rotation.parse("100k") == Rotation(every_s=None, every_rows=100_000)
    assert Rotation.parse("1M").every_rows == 1_000_000 and Rotation.parse("5000").every_rows == 5000
    for bad in ("soon", "0", "-5s", "0s"):
        with pytest.raises(CaptureError, match="--rotate"):
            Rotation.parse(bad)


def test_parts_commit_on_the_timer_and_merge_at_rotation(tmp_path):
    log = CaptureLog(tmp_path, Rotation(every_s=3600.0), flush_s=0.05)
    for i in range(5):
        log.add(row(i))
    time.sleep(0.06)
    log.tick()  # the part is due: committed, so a reader sees the rows now
    assert [p.name.count("-") for p in log_files(tmp_path)] == [2]
    assert select_rows(tmp_path).num_rows == 5
    for i in range(5, 8):
        log.add(row(i))
    time.sleep(0.06)
    log.tick()
    assert select_rows(tmp_path).num_rows == 8 and len(log_files(tmp_path)) == 2
    log.close()  # the rotation ends: one merged shard, its parts gone
    files = log_files(tmp_path)
    assert len(files) == 1 and files[0].name == log.shards[0] and files[0].name.startswith("capture-")
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == [files[0].name]
    table = select_rows(tmp_path)
    assert table.column("request_id").to_pylist() == [f"r{i}" for i in range(8)]
    schema = pq.read_schema(files[0])
    assert schema.equals(CAPTURE_SCHEMA) and schema.metadata[b"shadowreplay.kind"] == b"traffic_log"
    assert table.column("prod_ttft_ms").to_pylist() == [12.5] * 8
    assert CAPTURE_SCHEMA.names[-len(CAPTURE_COLUMNS) :] == list(CAPTURE_COLUMNS)
    # a shadow's `--baseline production` reads production's outcome in the results' vocabulary
    assert shadow_requests(table).column("prod_status").to_pylist() == ["ok"] * 8


def test_rotation_by_rows(tmp_path):
    log = CaptureLog(tmp_path, Rotation(every_s=None, every_rows=3), flush_s=60)
    for i in range(7):
        log.add(row(i))
    log.close()
    counts = [pq.ParquetFile(p).metadata.num_rows for p in log_files(tmp_path)]
    assert counts == [3, 3, 1] and len(set(log.shards)) == 3  # names unique within one second
    assert open_traffic_log(tmp_path).num_rows == 7


def test_a_crashed_captures_leftovers_are_merged_or_tidied(tmp_path):
    crashed = CaptureLog(tmp_path, Rotation(every_s=3600.0), flush_s=0.01)
    for i in range(4):
        crashed.add(row(i))
        time.sleep(0.02)
        crashed.tick()  # four committed parts, then the process "dies": no close, no merge
    parts = sorted(tmp_path.glob("capture-*-*.parquet"))
    assert len(parts) == 4
    (tmp_path / f".{parts[0].name}.tmp").write_bytes(b"torn")
    crashed._merges.put(None)
    crashed._merger.join()
    import os

    os.close(crashed._lock_fd)
    whole = parts[0].name.rsplit("-", 1)[0] + ".parquet"
    (tmp_path / "capture-20200101T000000.000Z-00000.parquet").write_bytes(parts[0].read_bytes())
    (tmp_path / "capture-20200101T000000.000Z.parquet").write_bytes(parts[0].read_bytes())  # merge committed
    assert open_traffic_log(tmp_path).num_rows == 5  # a reader, before any recovery: every row once
    later = CaptureLog(tmp_path, Rotation(), flush_s=1)
    later.close()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".capture.lock")) == sorted(
        ["capture-20200101T000000.000Z.parquet", whole]
    )
    assert sorted(later.recovered) == sorted(["capture-20200101T000000.000Z.parquet", whole])
    assert select_rows(tmp_path).column("request_id").to_pylist() == ["r0", "r0", "r1", "r2", "r3"]


def test_one_capture_per_directory(tmp_path):
    first = CaptureLog(tmp_path, Rotation())
    with pytest.raises(CaptureError, match="another capture is writing this directory"):
        CaptureLog(tmp_path, Rotation())
    first.close()
    CaptureLog(tmp_path, Rotation()).close()


def test_redaction_happens_before_anything_reaches_a_file(tmp_path):
    recorder = CaptureRecorder(
        tmp_path, "127.0.0.1:1", "http://user:pw@up.example:8000/v1?key=sk-x", flush_s=0.05,
        redactor=Redactor.builtin(),
    )  # fmt: skip
    recorder.start()
    recorder.record(finished_exchange(1, f"mail {EMAIL} card {CARD}", f"sent to {EMAIL}", session=EMAIL))
    recorder.record(finished_exchange(2, "nothing personal", "ok", session=EMAIL))
    recorder.close()
    written = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    for secret in (EMAIL, CARD, "pw@", "sk-x"):
        assert secret.encode() not in written, secret
    table = select_rows(tmp_path)
    messages = json.loads(table.column("messages")[0].as_py())
    assert messages[0]["role"] == "user" and len(messages[0]["content"]) == len(f"mail {EMAIL} card {CARD}")
    assert table.column("response_text")[0].as_py() != f"sent to {EMAIL}"
    sessions = table.column("session_id").to_pylist()
    assert sessions[0] == sessions[1] and sessions[0].startswith("redacted-")  # one conversation still
    manifest = json.loads(recorder.manifest_path.read_text())
    # e-mails: the message, the answer, and in each row the session id and params' `user` field
    assert manifest["redactions"] == {"email": 6, "card": 1} and manifest["clean_stop"] is True
    assert manifest["upstream"] == "http://up.example:8000/v1" and manifest["recorder"]["written"] == 2
    assert manifest["shards"] == [p.name for p in log_files(tmp_path)]


def test_sampling_keeps_whole_sessions(tmp_path):
    recorder = CaptureRecorder(tmp_path, "l", "http://u", sample=0.5, flush_s=0.05)
    recorder.start()
    for i in range(400):
        exchange = finished_exchange(i, "hi", "ok", session=f"s{i % 40}")
        recorder.admit(exchange)  # as the proxy does when the request arrives
        recorder.record(exchange)
    recorder.close()
    table = select_rows(tmp_path)
    kept = set(table.column("session_id").to_pylist())
    assert 8 <= len(kept) <= 32  # about half of 40 sessions
    assert table.num_rows == 10 * len(kept)  # each kept session whole
    assert recorder.counts.sampled_out == 400 - table.num_rows


def test_a_recorder_that_falls_behind_drops_and_counts_never_waits(tmp_path):
    recorder = CaptureRecorder(tmp_path, "l", "http://u", max_queued=3)
    started = time.monotonic()
    for i in range(10):  # no thread takes them yet: the queue fills at 3
        recorder.record(finished_exchange(i, "hi", "ok"))
    assert time.monotonic() - started < 1.0
    assert recorder.counts.record_dropped == 7 and recorder.counts.received == 10
    recorder.start()
    recorder.close()
    assert select_rows(tmp_path).num_rows == 3


def test_public_upstream_drops_credentials_and_query():
    assert public_upstream("https://k:secret@api.example.com/v1?api-key=x#f") == "https://api.example.com/v1"
    assert public_upstream("http://127.0.0.1:8000") == "http://127.0.0.1:8000"


def test_a_row_that_cannot_be_built_is_counted_not_fatal(tmp_path, monkeypatch):
    recorder = CaptureRecorder(tmp_path, "l", "http://u", flush_s=0.05)
    bad = finished_exchange(1, "hi", "ok")
    monkeypatch.setattr(bad, "row", lambda: 1 / 0)
    recorder.start()
    recorder.record(bad)
    recorder.record(finished_exchange(2, "hi", "ok"))
    recorder.close()
    assert recorder.counts.unrecordable == 1 and select_rows(tmp_path).num_rows == 1
    assert "ZeroDivisionError" in json.loads(Path(recorder.manifest_path).read_text())["first_error"]


def test_a_failed_write_keeps_its_rows_and_is_tried_again(tmp_path, monkeypatch):
    from shadowreplay.replay.schemas import shards

    real = shards.commit_file
    failures = [OSError(28, "No space left on device")]

    def flaky(tmp, final):
        if failures:
            raise failures.pop()
        real(tmp, final)

    monkeypatch.setattr(shards, "commit_file", flaky)
    log = CaptureLog(tmp_path, Rotation(every_s=None, every_rows=3), flush_s=60)
    for i in range(3):
        log.add(row(i))  # the rotation ends at 3 rows; its write fails: the rows stay in memory
    assert log.counts.write_failures == 1 and list(tmp_path.glob("*.parquet")) == []
    log.add(row(3))
    log.tick()  # tried again: committed, then merged
    log.close()
    assert select_rows(tmp_path).column("request_id").to_pylist() == ["r0", "r1", "r2", "r3"]
    assert "No space left on device" in (log.first_error or "")
