"""The one shard writer (replay/schemas/shards.py), as a run directory's result writer: inline and
background writing give the same committed, self-contained shards; the background thread does the
encoding, keeps rows whose write failed for a retry, and pushes back when its queue is full; a shard
that was not committed is never seen by a reader."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from shadowreplay.replay.schemas import shards
from shadowreplay.replay.schemas.manifest import Counts, Manifest
from shadowreplay.replay.schemas.results import RESULTS_SCHEMA
from shadowreplay.replay.schemas.run_dir import RunDir, RunDirError
from shadowreplay.replay.schemas.shards import (
    CONVERT_SLICE_ROWS,
    MAX_PENDING_SHARDS,
    PACED_ROW_GROUP_ROWS,
    ShardWriteError,
    ShardWriter,
    rows_to_table,
)
from shadowreplay.replay.secrets import REDACTED, Scrubber


def result_writer(run_dir: Path, worker: str, **options: Any) -> ShardWriter:
    return RunDir(run_dir).result_writer(worker, **options)


def result(i: int) -> dict:
    """A complete result row (every RESULTS_SCHEMA column) for request i."""
    row: dict[str, Any] = {name: None for name in RESULTS_SCHEMA.names}
    row.update(
        run_id="run",
        target="t",
        request_id=f"req-{i:05d}",
        attempt=1,
        final=True,
        worker="w0",
        scheduled_s=i * 0.01,
        sent_s=i * 0.01 + 0.0001,
        lateness_ms=0.1,
        ttft_ms=20.0 + i % 7,
        token_times_ms=[20.0 + k * 5.0 for k in range(i % 5)],
        status="ok",
        completion_tokens=i % 5,
    )
    return row


def read_rows(directory: Path) -> list[dict]:
    rows = []
    for path in sorted((directory / "results").glob("part-*.parquet")):
        rows += pq.read_table(path).to_pylist()  # each shard alone is a readable file
    return rows


@pytest.mark.parametrize("background", [False, True])
def test_every_row_lands_once_in_ordered_closed_shards(tmp_path, background):
    writer = result_writer(tmp_path, "w0", max_rows=100, background=background)
    rows = [result(i) for i in range(1050)]
    for row in rows:
        writer.add(row)
    writer.close()
    assert read_rows(tmp_path) == rows
    assert [p.name for p in writer.files] == [f"part-w0-{seq:05d}.parquet" for seq in range(11)]
    assert writer.rows_written == 1050
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left behind"


def test_background_mode_encodes_and_writes_in_its_own_thread(tmp_path, monkeypatch) -> None:
    threads: list[tuple[str, bool]] = []  # (thread name, paced) of each shard write
    original = ShardWriter._write

    def spy(self, seq, rows, paced=False):
        threads.append((threading.current_thread().name, paced))
        return original(self, seq, rows, paced)

    monkeypatch.setattr(ShardWriter, "_write", spy)
    writer = result_writer(tmp_path, "w7", max_rows=10, background=True)
    for i in range(30):
        writer.add(result(i))
    writer.close()
    assert threads == [("shard-writer-part-w7", True)] * 3
    assert len(read_rows(tmp_path)) == 30


def test_flush_returns_when_the_rows_are_on_disk(tmp_path):
    writer = result_writer(tmp_path, "w0", max_rows=1000, background=True)
    for i in range(5):
        writer.add(result(i))
    writer.flush()
    assert len(read_rows(tmp_path)) == 5
    writer.add(result(5))
    writer.close()
    assert len(read_rows(tmp_path)) == 6


def test_an_old_buffer_is_handed_on_when_due(tmp_path):
    writer = result_writer(tmp_path, "w0", max_rows=1000, max_age_s=0.05, background=True)
    writer.add(result(0))
    writer.flush_if_due()
    writer.flush_if_due()
    assert writer.buffered() == 1, "not due yet: still buffered"
    time.sleep(0.06)
    writer.flush_if_due()
    assert writer.buffered() == 0
    writer.close()
    assert len(read_rows(tmp_path)) == 1


@pytest.mark.parametrize("background", [False, True])
def test_a_growing_shard_is_committed_when_due_and_rewritten_whole_until_it_is_full(tmp_path, background):
    """Results every max_age_s into the same file until it holds max_rows: a slow run of days
    leaves a file every max_rows rows, not every few seconds, and loses at most what is not yet due."""
    writer = result_writer(tmp_path, "w0", max_rows=10, max_age_s=0.0, background=background)
    rows = [result(i) for i in range(23)]
    seen: list[list[int]] = []  # rows per shard on disk after each due flush
    for row in rows:
        writer.add(row)
        writer.flush_if_due()
        writer.flush() if background else None  # the writer thread done: what a reader sees now
        shard_rows = [pq.read_metadata(p).num_rows for p in sorted((tmp_path / "results").glob("part-*.parquet"))]
        seen.append(shard_rows)
        assert sum(shard_rows) == len(seen), "every row added is committed once it is due"
    assert seen[2] == [3] and seen[9] == [10] and seen[10] == [10, 1] and seen[-1] == [10, 10, 3]
    writer.close()
    assert read_rows(tmp_path) == rows
    assert [p.name for p in writer.files] == [f"part-w0-{seq:05d}.parquet" for seq in range(3)]
    assert writer.rows_written == 23
    assert not list((tmp_path / "results").glob(".*.tmp"))


def test_an_older_version_of_a_growing_shard_is_never_written_over_a_newer(tmp_path):
    writer = result_writer(tmp_path, "w0", max_rows=10)
    writer._write(0, [result(i) for i in range(4)])
    writer._write(0, [result(i) for i in range(2)])  # a failed earlier version, retried late
    assert [r["request_id"] for r in read_rows(tmp_path)] == [result(i)["request_id"] for i in range(4)]
    assert writer.rows_written == 4 and len(writer.files) == 1


def test_sliced_conversion_gives_the_same_table():
    rows = [result(i) for i in range(CONVERT_SLICE_ROWS * 3 + 5)]
    sliced = rows_to_table(rows, RESULTS_SCHEMA, CONVERT_SLICE_ROWS)
    assert sliced.schema == RESULTS_SCHEMA
    assert sliced.to_pylist() == rows_to_table(rows, RESULTS_SCHEMA).to_pylist() == rows


@pytest.mark.parametrize("background", [False, True])
def test_a_failed_write_keeps_its_rows_and_close_writes_them(tmp_path, monkeypatch, background):
    real_write = shards.write_parquet
    failures = {"left": 1}

    def flaky(path, rows, schema, paced=False, to_table=None, dictionary_columns=()):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError("disk full (simulated)")
        return real_write(path, rows, schema, paced, to_table, dictionary_columns)

    monkeypatch.setattr(shards, "write_parquet", flaky)
    writer = result_writer(tmp_path, "w0", max_rows=10, background=background)
    rows = [result(i) for i in range(25)]
    for row in rows:
        try:
            writer.add(row)
        except OSError:
            assert not background, "background mode never raises a write error into add()"
    writer.close()
    assert sorted(read_rows(tmp_path), key=lambda r: r["request_id"]) == rows
    assert writer.rows_written == 25


def test_a_write_that_keeps_failing_is_raised_and_its_rows_kept(tmp_path, monkeypatch):
    def broken(path, rows, schema, paced=False, to_table=None, dictionary_columns=()):
        raise OSError("read-only file system (simulated)")

    monkeypatch.setattr(shards, "write_parquet", broken)
    writer = result_writer(tmp_path, "w0", max_rows=10, background=True)
    for i in range(10):
        writer.add(result(i))
    with pytest.raises(ShardWriteError, match="read-only"):
        writer.close()
    assert writer.rows_written == 0
    assert [len(rows) for _, rows in writer._failed] == [10], "the rows are still held"
    monkeypatch.undo()
    writer.close()  # the disk is back: the kept rows are written now
    assert len(read_rows(tmp_path)) == 10


def test_a_full_queue_makes_the_adder_wait(tmp_path, monkeypatch):
    release = threading.Event()
    original = ShardWriter._write

    def slow(self, seq, rows, paced=False):
        release.wait(10)
        return original(self, seq, rows, paced)

    monkeypatch.setattr(ShardWriter, "_write", slow)
    writer = result_writer(tmp_path, "w0", max_rows=1, background=True)
    added = []

    def adder() -> None:
        for i in range(MAX_PENDING_SHARDS + 3):  # one being written, MAX_PENDING_SHARDS queued, then a wait
            writer.add(result(i))
            added.append(i)

    thread = threading.Thread(target=adder)
    thread.start()
    time.sleep(0.3)
    assert len(added) == MAX_PENDING_SHARDS + 1, "the adder waits while the queue is full"
    release.set()
    thread.join(10)
    writer.close()
    assert len(read_rows(tmp_path)) == MAX_PENDING_SHARDS + 3


def test_the_writer_thread_writes_a_shard_in_row_groups_with_every_row_kept(tmp_path):
    count = PACED_ROW_GROUP_ROWS * 2 + 7
    writer = result_writer(tmp_path, "w0", max_rows=count, background=True)
    rows = [result(i) for i in range(count)]
    for row in rows:
        writer.add(row)
    writer.close()
    (shard,) = writer.files
    assert pq.ParquetFile(shard).metadata.num_row_groups == 3, "paced: one row group per piece"
    assert pq.read_table(shard).to_pylist() == rows


def test_warm_up_writes_no_file(tmp_path):
    writer = result_writer(tmp_path, "w0", background=True)
    writer.warm_up([result(i) for i in range(3)])
    writer.close()
    assert list((tmp_path / "results").iterdir()) == [] and writer.rows_written == 0


def test_a_shard_that_was_not_committed_is_invisible_to_readers(tmp_path, monkeypatch):
    """A crash between writing and renaming leaves only a hidden temporary file: no reader lists it,
    and the run directory still reports no results."""

    def crash(tmp, final):
        raise KeyboardInterrupt("killed before the rename (simulated)")

    monkeypatch.setattr(shards, "commit_file", crash)
    run = RunDir(tmp_path)
    writer = run.result_writer("w0", max_rows=5)
    with pytest.raises(KeyboardInterrupt):
        for i in range(5):
            writer.add(result(i))
    (leftover,) = run.results_dir.iterdir()
    assert leftover.name.startswith(".") and leftover.suffix == ".tmp"
    assert run.result_shards() == [] and not run.has_results()
    monkeypatch.undo()
    writer.close()  # the rows were kept: committed now
    assert [p.name for p in run.result_shards()] == ["part-w0-00000.parquet"]


def test_the_final_row_index_names_exactly_the_pairs_with_a_final_row(tmp_path):
    run = RunDir(tmp_path)
    writer = run.result_writer("w0", max_rows=3)
    rows = []
    for i in range(7):
        for target in ("a", "b"):
            row = result(i) | {"target": target, "final": not (i == 6 and target == "b")}
            rows.append(row)
            writer.add(row)
    writer.add(result(99) | {"target": "a", "attempt": 1, "final": False})  # a retry whose last attempt is missing
    writer.close()
    index = run.final_rows()
    expected = {(r["request_id"], r["target"]) for r in rows if r["final"]}
    assert all(pair in index for pair in expected) and len(index) == 13
    assert ("req-00006", "b") not in index and ("req-00099", "a") not in index
    assert index.missing(["req-00006", "req-00099"], ["a", "b"]) == [
        ("req-00006", "b"),
        ("req-00099", "a"),
        ("req-00099", "b"),
    ]


def test_a_run_directory_with_results_is_refused_for_a_new_run(tmp_path):
    run = RunDir(tmp_path / "run").create_new()
    writer = run.result_writer("w0")
    writer.add(result(0))
    writer.close()
    with pytest.raises(RunDirError, match="already holds results"):
        RunDir(tmp_path / "run").create_new()


def test_the_manifest_is_typed_scrubbed_and_read_back(tmp_path):
    key = "sk-canary-0123456789abcdef"
    run = RunDir(tmp_path)
    manifest = Manifest(
        run_id="r1",
        targets=[{"name": "a", "api_key_env": "A_KEY"}],
        servers=[{"target": "a", "log_tail": f"Authorization: Bearer {key}"}],
        counts=Counts(requests=3, rows_by_status={"ok": 3}),
    )
    run.write_manifest(manifest, Scrubber([key]))
    text = run.manifest_path.read_text()
    assert key not in text and REDACTED in text
    back = run.read_manifest()
    assert back is not None and back.run_id == "r1" and back.counts.rows_by_status == {"ok": 3}
    assert back.target_configs == {"a": {"name": "a", "api_key_env": "A_KEY"}}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"], "no temporary file left behind"


def test_a_manifest_from_a_newer_version_is_read_and_a_writer_typo_is_refused(tmp_path):
    run = RunDir(tmp_path)
    run.manifest_path.write_text(json.dumps({"run_id": "r2", "field_from_the_future": 1, "counts": {"new": 2}}))
    manifest = run.read_manifest()
    assert manifest is not None and manifest.run_id == "r2"
    with pytest.raises(ValueError, match="run_idd"):
        Manifest(run_idd="typo")
    run.manifest_path.write_text("[1, 2]")
    with pytest.raises(RunDirError, match="expected a JSON object"):
        run.read_manifest()


def test_result_shards_dictionary_encode_only_the_few_valued_columns(tmp_path):
    """run_id, target, status and the like are dictionary-encoded (analysis filters on them); ids, times and
    texts are written plain (dictionary encoding of distinct values costs the writer, GIL held, for nothing)."""
    writer = result_writer(tmp_path, "w0", max_rows=10)
    for i in range(10):
        writer.add(result(i))
    writer.close()
    (shard,) = sorted((tmp_path / "results").glob("*.parquet"))
    group = pq.ParquetFile(shard).metadata.row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings for i in range(group.num_columns)}
    assert any("DICTIONARY" in e for e in encodings["target"]) and any("DICTIONARY" in e for e in encodings["status"])
    assert not any("DICTIONARY" in e for e in encodings["request_id"]) and not any(
        "DICTIONARY" in e for e in encodings["scheduled_s"]
    )
