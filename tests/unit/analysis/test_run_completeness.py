"""An incomplete run says so before any figure (replay/schemas/run_completeness.py, `report`): planned
pairs against final rows, a missing or unfinished manifest, torn shards, worker_lost rows, duplicate
final rows, and how to resume; a complete run says nothing. Run directories are written with the
project's own writers (RunDir.result_writer, write_plan_shard, write_manifest)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

from shadowreplay.cli import main
from shadowreplay.replay.schemas.manifest import Counts, Manifest, ResumeFacts
from shadowreplay.replay.schemas.run_completeness import RunCompleteness
from shadowreplay.replay.schemas.run_dir import RunDir
from shadowreplay.replay.secrets import Scrubber
from tests.support.results_factory import result_row

TARGETS = ("a", "b")


def write_run(
    path: Path,
    requests: int = 10,
    *,
    skip: Iterable[tuple[int, str]] = (),
    statuses: dict[tuple[int, str], str] | None = None,
    status: str | None = "completed",
    manifest: bool = True,
    shard_rows: int = 1000,
    extra_rows: Iterable[dict] = (),
) -> RunDir:
    """A replay of `requests` requests to TARGETS: its plan shard, one final row per (request, target)
    but those in `skip` (with `statuses` where given), and a manifest with `status` unless not `manifest`."""
    run = RunDir(path)
    ids = [f"req-{i:04d}" for i in range(requests)]
    run.write_plan_shard("w000", pa.table({"request_id": ids, "scheduled_s": [i * 0.1 for i in range(requests)]}), 100)
    writer = run.result_writer("w000", max_rows=shard_rows)
    left_out, chosen = set(skip), statuses or {}
    for i, request_id in enumerate(ids):
        for target in TARGETS:
            if (i, target) in left_out:
                continue
            row_status = chosen.get((i, target), "ok")
            writer.add(
                result_row(
                    request_id,
                    target=target,
                    scheduled_s=i * 0.1,
                    status=row_status,
                    ttft_ms=20.0 + i if row_status == "ok" else None,
                    http_status=200 if row_status == "ok" else None,
                )
            )
    for row in extra_rows:
        writer.add(row)
    writer.close()
    if manifest:
        run.write_manifest(
            Manifest(
                run_id="run-factory",
                status=status,  # type: ignore[arg-type]
                targets=[{"name": name} for name in TARGETS],
                counts=Counts(requests=requests, targets=len(TARGETS), scheduled=requests * len(TARGETS)),
                resume=ResumeFacts(targets=[{"name": name} for name in TARGETS]),
            ),
            Scrubber(),
        )
    return run


def test_a_complete_run_says_nothing(tmp_path):
    found = RunCompleteness.of(write_run(tmp_path))
    assert found.complete and found.lines() == []
    assert (found.planned_pairs, found.planned_from, found.final_pairs, found.missing_pairs) == (20, "manifest", 20, 0)
    assert found.final_rows_by_status == {"ok": 20} and found.resumable_pairs == 0
    assert found.model_dump(mode="json")["lines"] == [] and found.model_dump()["complete"] is True


def test_missing_pairs_are_counted_against_the_plan_and_resumable(tmp_path):
    run = write_run(tmp_path, skip=[(i, t) for i in range(6, 10) for t in TARGETS] + [(5, "b")], status="running")
    found = RunCompleteness.of(run)
    assert not found.complete
    assert (found.final_pairs, found.missing_pairs, found.resumable_pairs) == (11, 9, 9)
    lines = found.lines()
    assert lines[0] == "INCOMPLETE: 11 of 20 planned (request, target) pairs have a final row; 9 have none"
    assert lines[1].startswith("manifest status running: ")
    assert f"resume: shadowreplay replay --resume {tmp_path}" in lines
    assert lines[-1] == "the figures below cover only the final rows on disk"


def test_thousands_are_written_with_separators(tmp_path):
    run = write_run(tmp_path, requests=1500, skip=[(i, "b") for i in range(1000, 1500)], status="running")
    assert RunCompleteness.of(run).lines()[0] == (
        "INCOMPLETE: 2,500 of 3,000 planned (request, target) pairs have a final row; 500 have none"
    )


def test_without_a_manifest_the_plan_gives_an_estimate_and_no_resume(tmp_path):
    run = write_run(tmp_path, skip=[(9, "a"), (9, "b")], manifest=False)
    found = RunCompleteness.of(run)
    assert (found.manifest, found.manifest_status, found.driver_finished) == ("missing", None, False)
    assert (found.planned_pairs, found.planned_from, found.missing_pairs) == (20, "estimate", 2)
    lines = found.lines()
    assert lines[0].startswith(
        "INCOMPLETE: 18 of about 20 planned (request, target) pairs have a final row; 2 have none"
    )
    assert "no manifest.json: the run's driver never finished (killed or crashed)" in lines
    assert found.resume_command is None and any(
        line.startswith("cannot be resumed: manifest.json is missing") for line in lines
    )


def test_an_unreadable_manifest_is_reported(tmp_path):
    run = write_run(tmp_path)
    run.manifest_path.write_text("{not json", encoding="utf-8")
    found = RunCompleteness.of(run)
    assert found.manifest == "unreadable" and not found.complete and found.planned_from == "estimate"
    assert any(line.startswith("manifest.json could not be read (") for line in found.lines())


def test_status_running_with_every_row_is_still_incomplete(tmp_path):
    found = RunCompleteness.of(write_run(tmp_path, status="running"))
    assert not found.complete and found.missing_pairs == 0
    assert found.lines()[:2] == [
        "INCOMPLETE: 20 of 20 planned (request, target) pairs have a final row",
        "manifest status running: the run is still going, or its driver was killed before it finished",
    ]


def test_a_torn_shard_is_named_its_rows_missing(tmp_path):
    run = write_run(tmp_path, shard_rows=5)
    shard = run.result_shards()[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # a committed shard cut short
    found = RunCompleteness.of(run)
    assert [torn.name for torn in found.torn_shards] == [shard.name] and found.torn_shards[0].reason
    assert (found.final_pairs, found.missing_pairs, found.resumable_pairs) == (15, 5, 5)
    lines = found.lines()
    assert any(
        line.startswith(f"1 result shard(s) could not be read (torn), their rows left out: {shard.name} (")
        for line in lines
    )
    assert f"resume: shadowreplay replay --resume {tmp_path}" in lines


def test_worker_lost_rows_make_a_completed_run_incomplete_and_resumable(tmp_path):
    lost = {(i, "a"): "worker_lost" for i in range(3)} | {(4, "b"): "cancelled"}
    found = RunCompleteness.of(write_run(tmp_path, statuses=lost))
    assert not found.complete and found.missing_pairs == 0 and found.resumable_pairs == 4
    assert found.final_rows_by_status == {"cancelled": 1, "ok": 16, "worker_lost": 3}
    lines = found.lines()
    assert "3 requests ended worker_lost (their worker process died with them in flight)" in lines
    assert "1 request ended cancelled (Ctrl-C, or the driver was lost)" in lines


def test_duplicate_final_rows_are_counted(tmp_path):
    again = [result_row("req-0001", target="a", scheduled_s=0.1), result_row("req-0002", target="b", scheduled_s=0.2)]
    found = RunCompleteness.of(write_run(tmp_path, extra_rows=again))
    assert (found.final_rows, found.final_pairs, found.duplicate_finals) == (22, 20, 2)
    assert not found.complete
    assert "2 duplicate final row(s): some (request, target) pairs have more than one" in found.lines()


def test_a_locust_run_has_no_planned_count_and_is_complete_when_it_ended(tmp_path):
    run = write_run(tmp_path, manifest=False)
    run.write_manifest(Manifest(run_id="run-factory", load_generator={"tool": "locust"}, ended_at=1.0), Scrubber())
    found = RunCompleteness.of(run)
    assert found.planned_pairs is None and found.missing_pairs is None and found.complete and found.lines() == []


def test_report_on_an_incomplete_run_says_so_first(tmp_path, capsys):
    lost = {(i, "a"): "worker_lost" for i in range(2)}
    run = write_run(tmp_path, skip=[(i, t) for i in range(7, 10) for t in TARGETS], statuses=lost, status="running")
    assert main(["report", str(run.path), "--prices", "none"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:5] == [
        "INCOMPLETE: 14 of 20 planned (request, target) pairs have a final row; 6 have none",
        "manifest status running: the run is still going, or its driver was killed before it finished",
        "2 requests ended worker_lost (their worker process died with them in flight)",
        f"resume: shadowreplay replay --resume {tmp_path}",
        "the figures below cover only the final rows on disk",
    ]
    assert out[5].startswith("Run run-factory")
    summary = json.loads(run.summary_path.read_text())
    completeness = summary["completeness"]
    assert completeness["complete"] is False and completeness["lines"] == out[:5]
    assert (completeness["planned_pairs"], completeness["missing_pairs"], completeness["resumable_pairs"]) == (20, 6, 8)
    html = run.report_path.read_text()
    top = html.index("Incomplete run")
    assert top < html.index("Over time</h2>")
    assert (
        '<p class="alert">INCOMPLETE: 14 of 20 planned (request, target) pairs have a final row; 6 have none</p>'
        in html
    )

    assert main(["report", str(run.path), "--prices", "none", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["completeness"]["lines"] == out[:5]
    assert captured.err.splitlines()[0] == out[0]


def test_report_without_a_manifest_and_with_a_torn_shard_reports_the_rest(tmp_path, capsys):
    run = write_run(tmp_path, manifest=False, shard_rows=5)
    shard = run.result_shards()[0]
    shard.write_bytes(shard.read_bytes()[:100])
    assert main(["report", str(run.path), "--prices", "none", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["source"]["manifest"] is None and summary["source"]["results_files"] == 3
    assert summary["completeness"]["manifest"] == "missing"
    assert [torn["name"] for torn in summary["completeness"]["torn_shards"]] == [shard.name]
    assert summary["targets"]["a"]["all"]["requests"] + summary["targets"]["b"]["all"]["requests"] == 15


def test_a_complete_run_reports_no_warning(tmp_path, capsys):
    run = write_run(tmp_path)
    assert main(["report", str(run.path), "--prices", "none"]) == 0
    assert capsys.readouterr().out.startswith("Run run-factory")
    assert json.loads(run.summary_path.read_text())["completeness"]["lines"] == []
    assert "Incomplete run" not in run.report_path.read_text()


def test_report_on_a_run_it_cannot_read_says_what_is_there_then_why(tmp_path, capsys):
    again = [result_row("req-0001", target="a", scheduled_s=0.1)]
    run = write_run(tmp_path, extra_rows=again)
    assert main(["report", str(run.path), "--prices", "none"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "INCOMPLETE: 20 of 20 planned (request, target) pairs have a final row"
    assert "1 duplicate final row(s): some (request, target) pairs have more than one" in err
    assert err[-1].startswith("shadowreplay report: ") and "has 2 final rows" in err[-1]


def test_a_shadow_is_resumed_with_its_gates(tmp_path):
    run = write_run(tmp_path, skip=[(3, "b")])
    run.shadow_requests_path.write_bytes(b"")  # a shadow's run directory holds its request facts
    found = RunCompleteness.of(run)
    assert found.resume_command == f"shadowreplay shadow --resume {tmp_path} --gates GATES.yaml"
