"""analysis/data/run_data.py: reading a run directory, and clear errors for directories that break the contract."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shadowreplay.analysis.data.run_data import RunDataError, load_run
from shadowreplay.replay.schemas.results import RESULTS_SCHEMA
from tests.support.results_factory import result_row, write_results


def test_reads_every_shard_and_the_manifest(tmp_path):
    rows = [result_row(f"r{i}", target=t) for i in range(5) for t in ("a", "b")]
    rows.append(result_row("r0", target="a", attempt=0, final=False, status="http_error"))
    write_results(
        tmp_path, rows, shards=3, manifest={"run_id": "run-factory", "targets": [{"name": "a"}, {"name": "b"}]}
    )
    run = load_run(tmp_path)
    assert len(run.files) == 3
    assert run.rows.height == 11 and run.final_rows.height == 10
    assert run.targets == ["a", "b"] and run.run_id == "run-factory"
    assert run.manifest is not None and run.manifest.run_id == "run-factory"
    assert run.target_configs == {"a": {"name": "a"}, "b": {"name": "b"}}
    assert "output_text" not in run.rows.columns
    assert "output_text" in load_run(tmp_path, include_output_text=True).rows.columns
    assert run.requests_without_final_row == 0


def test_counts_requests_that_never_got_a_final_row(tmp_path):
    write_results(tmp_path, [result_row("r0"), result_row("r1", final=False, attempt=0)])
    run = load_run(tmp_path)
    assert run.requests_without_final_row == 1 and run.manifest is None


def _error(tmp_path) -> str:
    with pytest.raises(RunDataError) as info:
        load_run(tmp_path)
    return str(info.value)


def test_missing_directory_and_missing_results(tmp_path):
    assert "no such run directory" in _error(tmp_path / "absent")
    assert "no result shards" in _error(tmp_path)
    (tmp_path / "results").mkdir()
    assert "no result shards" in _error(tmp_path)


def test_a_file_that_is_not_parquet(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "part-0.parquet").write_text("not parquet")
    assert "part-0.parquet: cannot read as Parquet" in _error(tmp_path)


def test_a_parquet_file_without_results_metadata(tmp_path):
    (tmp_path / "results").mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "results" / "other.parquet")
    assert "other.parquet: not a results shard" in _error(tmp_path)


def test_another_schema_version(tmp_path):
    schema = RESULTS_SCHEMA.with_metadata({**RESULTS_SCHEMA.metadata, b"shadowreplay.schema_version": b"99"})
    write_results(tmp_path, [result_row("r0")], shards=1, schema=schema)
    assert "schema_version" in _error(tmp_path)


def test_a_version_1_shard_reads_without_the_raised_column(tmp_path):
    schema = RESULTS_SCHEMA.remove(RESULTS_SCHEMA.get_field_index("raised"))
    schema = schema.with_metadata({**RESULTS_SCHEMA.metadata, b"shadowreplay.schema_version": b"1"})
    write_results(tmp_path, [result_row("r0")], shards=1, schema=schema)
    rows = load_run(tmp_path).rows
    assert rows.get_column("raised").to_list() == [None]
    # Version 2 must have it.
    write_results(
        tmp_path, [result_row("r0")], shards=1, schema=RESULTS_SCHEMA.remove(RESULTS_SCHEMA.get_field_index("raised"))
    )
    assert "lacks columns ['raised']" in _error(tmp_path)


def test_a_version_2_shard_reads_without_the_replica_column(tmp_path):
    schema = RESULTS_SCHEMA.remove(RESULTS_SCHEMA.get_field_index("replica"))
    write_results(
        tmp_path / "v2",
        [result_row("r0")],
        shards=1,
        schema=schema.with_metadata({**RESULTS_SCHEMA.metadata, b"shadowreplay.schema_version": b"2"}),
    )
    assert load_run(tmp_path / "v2").rows.get_column("replica").to_list() == [None]
    write_results(tmp_path / "v3", [result_row("r0")], shards=1, schema=schema)  # version 3 must have it
    assert "lacks columns ['replica']" in _error(tmp_path / "v3")


def test_a_missing_column(tmp_path):
    schema = RESULTS_SCHEMA.remove(RESULTS_SCHEMA.get_field_index("ttft_ms"))
    (tmp_path / "results").mkdir()
    row = {k: v for k, v in result_row("r0").items() if k != "ttft_ms"}
    pq.write_table(pa.Table.from_pylist([row], schema=schema), tmp_path / "results" / "p.parquet")
    assert "lacks columns ['ttft_ms']" in _error(tmp_path)


def test_an_unknown_status_names_file_row_and_field(tmp_path):
    write_results(tmp_path, [result_row("r0"), result_row("r1", status="exploded")], shards=1)
    message = _error(tmp_path)
    assert "part-w0-00000.parquet: row 1: field status is 'exploded'" in message


def test_a_null_required_field_names_file_row_and_field(tmp_path):
    rows = [result_row("r0"), result_row("r1"), result_row("r2")]
    rows[2]["target"] = None
    index = RESULTS_SCHEMA.get_field_index("target")
    lax = RESULTS_SCHEMA.set(index, RESULTS_SCHEMA.field("target").with_nullable(True))  # a writer off contract
    write_results(tmp_path, rows, shards=1, schema=lax)
    assert "row 2: field target is null" in _error(tmp_path)


def test_two_final_rows_for_one_request(tmp_path):
    write_results(tmp_path, [result_row("r0"), result_row("r0", attempt=2)], shards=2)
    message = _error(tmp_path)
    assert "request r0 has 2 final rows for target target-a" in message
    assert "part-w0-00000.parquet, part-w1-00000.parquet" in message


def test_shards_of_two_runs(tmp_path):
    write_results(tmp_path, [result_row("r0", run_id="one"), result_row("r1", run_id="two")], shards=2)
    assert "shards from several runs: one, two" in _error(tmp_path)


def test_a_broken_manifest(tmp_path):
    write_results(tmp_path, [result_row("r0")])
    (tmp_path / "manifest.json").write_text("{not json")
    assert "manifest.json: not readable JSON" in _error(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2]")
    assert "expected a JSON object" in _error(tmp_path)


def test_shards_of_both_versions_and_other_types_summarize_as_one_run(tmp_path):
    """A version-1 shard (no `raised`), a shard written by another tool with wider integer types (cast on
    reading) and a current one: the scans join into one run whose figures count every row once."""
    from shadowreplay.analysis.summary.run_summary import summarize

    results = tmp_path / "results"
    results.mkdir()
    v1 = RESULTS_SCHEMA.remove(RESULTS_SCHEMA.get_field_index("raised"))
    v1 = v1.with_metadata({**RESULTS_SCHEMA.metadata, b"shadowreplay.schema_version": b"1"})
    rows_v1 = [{k: v for k, v in result_row(f"a{i}", gaps_ms=[5.0]).items() if k != "raised"} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows_v1, schema=v1), results / "part-w0-00000.parquet")
    wide = pa.schema(
        [field.with_type(pa.int64()) if field.type == pa.int32() else field for field in RESULTS_SCHEMA],
        metadata=RESULTS_SCHEMA.metadata,
    )
    rows_wide = [result_row(f"b{i}", gaps_ms=[5.0, 7.0]) for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows_wide, schema=wide), results / "part-w1-00000.parquet")
    pq.write_table(
        pa.Table.from_pylist([result_row("c0", gaps_ms=[])], schema=RESULTS_SCHEMA), results / "part-w2-00000.parquet"
    )
    run = load_run(tmp_path)
    assert (run.row_count, run.final_count, run.every_row_final, run.tags) == (8, 8, True, ())
    assert run.rows.schema["completion_tokens"] == pl.Int32  # cast to the contract
    stats = summarize(run).targets["target-a"].all
    assert stats.requests == 8 and stats.output_lengths.raised == 0
    assert stats.latency_ms["itl"].count == 3 * 1 + 4 * 2
    assert stats.multi_token_reads.gaps == 11
