"""Reading a run directory for analysis: `RUN_DIR/results/*.parquet` and `RUN_DIR/manifest.json`.

Only Parquet and JSON are read here, so a report can be recomputed from a copied run directory on
any machine (no Ray, no runner, no client). Every shard is checked against the results contract
(replay/schemas/results.py, schema_version 2; version 1 files, which lack `raised`, read with it
null): kind and version metadata, columns, required fields and statuses; a bad shard raises
RunDataError naming the file, and the row and field where it applies. A shard whose types are the
contract's is decoded by polars with only the columns asked for (`report` and `sweep` ask for
ANALYSIS_COLUMNS); the rows are read once and shared, and `final_rows` is filtered once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.schemas.contract import METADATA_KIND_KEY, METADATA_VERSION_KEY
from shadowreplay.replay.schemas.manifest import Manifest
from shadowreplay.replay.schemas.results import ADDED_COLUMNS, KIND, READABLE_VERSIONS, RESULTS_SCHEMA, STATUSES
from shadowreplay.replay.schemas.run_dir import RunDir, RunDirError

REQUIRED_FIELDS = tuple(field.name for field in RESULTS_SCHEMA if not field.nullable)
CHECKED_FIELDS = REQUIRED_FIELDS  # read from every shard to check it, whichever columns are asked for
RESULTS_DTYPES: dict[str, pl.DataType] = dict(
    cast(pl.DataFrame, pl.from_arrow(RESULTS_SCHEMA.empty_table())).schema  # a pa.Table reads as a DataFrame
)
LARGE_COLUMNS = ("output_text",)
"""Columns left out unless asked for: they can dwarf everything else in long runs."""
ANALYSIS_COLUMNS: tuple[str, ...] = tuple(
    name
    for name in RESULTS_SCHEMA.names
    if name not in (*LARGE_COLUMNS, "run_id", "attempt", "worker", "last_token_s", "finish_reason", "error")
)
"""The columns the summary, the cost model, the telemetry blocks and the report page read (`report`
and `sweep` load only these): the others are checked on reading but not kept."""


class RunDataError(ShadowReplayError, ValueError):
    """A run directory, results shard or manifest that cannot be read as the contract says."""


@dataclass(frozen=True)
class RunData:
    """The result rows and manifest of one run.

    `rows` holds every attempt (RESULTS_SCHEMA columns, less LARGE_COLUMNS unless asked for, or the
    columns `load_run` was given); `final_rows` the one outcome per request and target that metrics
    are computed over. Both are computed once and shared: `final_rows` is `rows` itself where every
    row is final (no retries), never a copy per reader.
    """

    run_dir: Path
    files: tuple[Path, ...]
    rows: pl.DataFrame
    manifest: Manifest | None
    run_ids: tuple[str, ...] = ()  # every run_id of the shards (load_run reads them, kept or not)

    @cached_property
    def final_rows(self) -> pl.DataFrame:
        final = self.rows.get_column("final")
        return self.rows if final.all() else self.rows.filter(final)

    @cached_property
    def run_id(self) -> str | None:
        ids = self.run_ids or tuple(self.rows.get_column("run_id").unique())
        return ids[0] if len(ids) == 1 else None

    @cached_property
    def targets(self) -> list[str]:
        return sorted(self.rows.get_column("target").unique().to_list())

    @property
    def target_configs(self) -> dict[str, dict[str, Any]]:
        """The targets' public configs from the manifest (`targets` list: name, kind, model, base_url, ...), by name."""
        return self.manifest.target_configs if self.manifest is not None else {}

    @cached_property
    def requests_without_final_row(self) -> int:
        """(target, request_id) pairs that have attempts but no final row (an interrupted run).

        Only the pairs of non-final rows can lack one, so only those are looked up."""
        keys = ["target", "request_id"]
        retried = self.rows.filter(~pl.col("final")).select(keys).unique()
        if retried.height == 0:
            return 0
        finished = self.final_rows.filter(pl.col("request_id").is_in(retried.get_column("request_id").implode()))
        return retried.join(finished.select(keys), on=keys, how="anti").height


def result_files(run_dir: str | Path) -> list[Path]:
    """The results shards of a run directory, sorted by name; RunDataError when there are none."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise RunDataError(f"{run.path}: no such run directory")
    files = run.result_shards()
    if not files:
        raise RunDataError(
            f"{run.results_dir}: no result shards (*.parquet); has a replay written to this run directory?"
        )
    return files


def read_result_shard(path: Path, columns: Sequence[str]) -> pl.DataFrame:
    """One results shard, checked against RESULTS_SCHEMA and cast to its types, with `columns` only.

    The required fields and `status` are checked whether or not they are among `columns`. A shard
    whose columns already have the schema's types (every shard shadowreplay writes) is decoded by
    polars straight from the file; any other is read by pyarrow and cast.
    """
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise RunDataError(f"{path}: cannot read as Parquet: {exc}") from None
    meta = schema.metadata or {}
    kind = meta.get(METADATA_KIND_KEY)
    if kind != KIND.encode():
        raise RunDataError(f"{path}: not a results shard (file metadata kind {kind!r}, expected {KIND!r})")
    version = meta.get(METADATA_VERSION_KEY)
    readable = [str(v) for v in READABLE_VERSIONS]
    if version is None or version.decode() not in readable:
        raise RunDataError(f"{path}: results schema_version {version!r}, this shadowreplay reads {', '.join(readable)}")
    later = {name for name, added in ADDED_COLUMNS.items() if added > int(version.decode())}
    missing = [name for name in RESULTS_SCHEMA.names if name not in schema.names and name not in later]
    if missing:
        raise RunDataError(f"{path}: results shard lacks columns {missing}")
    wanted = list(dict.fromkeys([*columns, *CHECKED_FIELDS]))
    present = [name for name in wanted if name in schema.names]
    try:
        if all(schema.field(name).type.equals(RESULTS_SCHEMA.field(name).type) for name in present):
            frame = pl.read_parquet(path, columns=present)
        else:
            frame = _read_and_cast(path, present)
    except (OSError, pa.ArrowException, pl.exceptions.PolarsError) as exc:
        raise RunDataError(f"{path}: cannot read: {exc}") from None
    frame = frame.with_columns(  # columns added after the shard's version: null
        pl.lit(None, dtype=RESULTS_DTYPES[name]).alias(name) for name in wanted if name not in present
    )
    _check_required(path, frame)
    _check_statuses(path, frame)
    return frame.select(columns)


def _read_and_cast(path: Path, columns: list[str]) -> pl.DataFrame:
    table = pq.ParquetFile(path).read(columns=columns)
    target_schema = pa.schema([RESULTS_SCHEMA.field(name) for name in columns])
    _check_required_arrow(path, table)
    try:
        table = table.cast(target_schema)
    except (ValueError, pa.ArrowException) as exc:
        raise RunDataError(f"{path}: columns do not have the results schema's types: {exc}") from None
    return cast(pl.DataFrame, pl.from_arrow(table))  # a pa.Table reads as a DataFrame


def _check_required_arrow(path: Path, table: pa.Table) -> None:
    for name in REQUIRED_FIELDS:
        if name in table.column_names and table.column(name).null_count:
            row = pc.index(pc.is_null(table.column(name)), True).as_py()
            raise RunDataError(f"{path}: row {row}: field {name} is null")


def _check_required(path: Path, frame: pl.DataFrame) -> None:
    for name in REQUIRED_FIELDS:
        column = frame.get_column(name)
        if column.null_count():
            row = column.is_null().arg_true()[0]
            raise RunDataError(f"{path}: row {row}: field {name} is null")


def _check_statuses(path: Path, frame: pl.DataFrame) -> None:
    status = frame.get_column("status")
    unknown = ~status.is_in(STATUSES)
    if unknown.any():
        row = unknown.arg_true()[0]
        raise RunDataError(f"{path}: row {row}: field status is {status[row]!r}, not one of {', '.join(STATUSES)}")


def read_manifest(run_dir: str | Path) -> Manifest | None:
    """RUN_DIR/manifest.json as a Manifest, or None when the run has none."""
    try:
        return RunDir(run_dir).read_manifest()
    except RunDirError as exc:
        raise RunDataError(str(exc)) from None


def load_run(run_dir: str | Path, include_output_text: bool = False, columns: Sequence[str] | None = None) -> RunData:
    """Read and check every results shard and the manifest of a run directory.

    `columns`: the result columns to keep (e.g. ANALYSIS_COLUMNS); default every column but
    LARGE_COLUMNS (and those too with `include_output_text`). Every shard is checked whatever is kept.
    Rows are numbered from 0 within their file in error messages. Raises RunDataError when there
    are no shards, a shard breaks the contract, the shards mix runs, or a request has two final
    rows for one target.
    """
    run_path = Path(run_dir)
    files = result_files(run_path)
    if columns is None:
        columns = [name for name in RESULTS_SCHEMA.names if include_output_text or name not in LARGE_COLUMNS]
    kept = list(dict.fromkeys([*columns, *CHECKED_FIELDS]))  # the checks below read some of them
    frames = [read_result_shard(path, kept) for path in files]
    run_ids = sorted({run_id for frame in frames for run_id in frame.get_column("run_id").unique().to_list()})
    if len(run_ids) > 1:
        raise RunDataError(f"{RunDir(run_path).results_dir}: shards from several runs: {', '.join(run_ids)}")
    rows = pl.concat(frames, how="vertical")
    _check_one_final_row(run_path, files, frames, rows)
    return RunData(run_path, tuple(files), rows.select(columns), read_manifest(run_path), tuple(run_ids))


def _check_one_final_row(run_path: Path, files: list[Path], frames: list[pl.DataFrame], rows: pl.DataFrame) -> None:
    """RunDataError when a (target, request_id) has two final rows. A hash of each final row's target and
    request id, sorted, clears the common case (no two equal); a collision, or a real duplicate, is then
    looked up exactly."""
    hashes = (
        rows.lazy()
        .filter(pl.col("final"))
        .select(pl.col("request_id").hash().xor(pl.col("target").hash()))
        .collect()
        .to_series()
        .to_numpy()
        .copy()
    )
    hashes.sort()  # a sort of integers, cheaper than a hash table of millions of keys
    if not (hashes[1:] == hashes[:-1]).any():
        return
    numbered = pl.concat(
        [
            frame.select("target", "request_id", "final").with_columns(pl.lit(i, dtype=pl.Int32).alias("_file"))
            for i, frame in enumerate(frames)
        ]
    )
    duplicated = (
        numbered.filter(pl.col("final"))
        .group_by("target", "request_id")
        .agg(pl.len().alias("n"), pl.col("_file").unique().sort().alias("files"))
        .filter(pl.col("n") > 1)
        .sort("target", "request_id")
    )
    if duplicated.height:
        first = duplicated.row(0, named=True)
        names = ", ".join(files[i].name for i in first["files"])
        raise RunDataError(
            f"{RunDir(run_path).results_dir}: request {first['request_id']} has {first['n']} final rows "
            f"for target {first['target']} (in {names}); {duplicated.height} request(s) affected"
        )
