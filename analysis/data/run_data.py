"""Reading a run directory for analysis: `RUN_DIR/results/*.parquet` and `RUN_DIR/manifest.json`.

Only Parquet and JSON are read here, so a report can be recomputed from a copied run directory on
any machine (no Ray, no runner, no client). Every shard is checked against the results contract
(replay/schemas/results.py, schema_version 2; version 1 files, which lack `raised`, read with it
null): kind and version metadata, columns, required fields and statuses; a bad shard raises
RunDataError naming the file, and the row and field where it applies.
"""

from __future__ import annotations

from dataclasses import dataclass
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
LARGE_COLUMNS = ("output_text",)
"""Columns left out unless asked for: they can dwarf everything else in long runs."""


class RunDataError(ShadowReplayError, ValueError):
    """A run directory, results shard or manifest that cannot be read as the contract says."""


@dataclass(frozen=True)
class RunData:
    """The result rows and manifest of one run.

    `rows` holds every attempt (RESULTS_SCHEMA columns, less LARGE_COLUMNS unless asked for);
    `final_rows` the one outcome per request and target that metrics are computed over.
    """

    run_dir: Path
    files: tuple[Path, ...]
    rows: pl.DataFrame
    manifest: Manifest | None

    @property
    def final_rows(self) -> pl.DataFrame:
        return self.rows.filter(pl.col("final"))

    @property
    def run_id(self) -> str | None:
        ids = self.rows.get_column("run_id").unique()
        return ids.item() if len(ids) == 1 else None

    @property
    def targets(self) -> list[str]:
        return sorted(self.rows.get_column("target").unique().to_list())

    @property
    def target_configs(self) -> dict[str, dict[str, Any]]:
        """The targets' public configs from the manifest (`targets` list: name, kind, model, base_url, ...), by name."""
        return self.manifest.target_configs if self.manifest is not None else {}

    @property
    def requests_without_final_row(self) -> int:
        """(target, request_id) pairs that have attempts but no final row (an interrupted run)."""
        attempted = self.rows.select("target", "request_id").unique().height
        finished = self.final_rows.select("target", "request_id").unique().height
        return attempted - finished


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


def read_result_shard(path: Path, columns: list[str]) -> pa.Table:
    """One results shard, checked against RESULTS_SCHEMA and cast to its types, with `columns` only."""
    try:
        parquet_file = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise RunDataError(f"{path}: cannot read as Parquet: {exc}") from None
    schema = parquet_file.schema_arrow
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
    present = [name for name in columns if name in schema.names]
    try:
        table = parquet_file.read(columns=present)
    except (OSError, pa.ArrowException) as exc:
        raise RunDataError(f"{path}: cannot read: {exc}") from None
    for name in columns:  # columns added after the shard's version: null
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, RESULTS_SCHEMA.field(name).type))
    table = table.select(columns)
    _check_required(path, table)
    target_schema = pa.schema([RESULTS_SCHEMA.field(name) for name in columns])
    if not table.schema.equals(target_schema):
        try:
            table = table.cast(target_schema)
        except (ValueError, pa.ArrowException) as exc:
            raise RunDataError(f"{path}: columns do not have the results schema's types: {exc}") from None
    _check_statuses(path, table)
    return table


def _check_required(path: Path, table: pa.Table) -> None:
    for name in REQUIRED_FIELDS:
        column = table.column(name)
        if column.null_count:
            row = pc.index(pc.is_null(column), True).as_py()
            raise RunDataError(f"{path}: row {row}: field {name} is null")


def _check_statuses(path: Path, table: pa.Table) -> None:
    status = table.column("status")
    unknown = pc.invert(pc.is_in(status, value_set=pa.array(STATUSES)))
    if pc.any(unknown).as_py():
        row = pc.index(unknown, True).as_py()
        raise RunDataError(
            f"{path}: row {row}: field status is {status[row].as_py()!r}, not one of {', '.join(STATUSES)}"
        )


def read_manifest(run_dir: str | Path) -> Manifest | None:
    """RUN_DIR/manifest.json as a Manifest, or None when the run has none."""
    try:
        return RunDir(run_dir).read_manifest()
    except RunDirError as exc:
        raise RunDataError(str(exc)) from None


def load_run(run_dir: str | Path, include_output_text: bool = False) -> RunData:
    """Read and check every results shard and the manifest of a run directory.

    Rows are numbered from 0 within their file in error messages. Raises RunDataError when there
    are no shards, a shard breaks the contract, the shards mix runs, or a request has two final
    rows for one target.
    """
    run_path = Path(run_dir)
    files = result_files(run_path)
    columns = [name for name in RESULTS_SCHEMA.names if include_output_text or name not in LARGE_COLUMNS]
    frames = [
        # a pa.Table reads as a DataFrame
        cast(pl.DataFrame, pl.from_arrow(read_result_shard(path, columns))).with_columns(
            pl.lit(index, dtype=pl.Int32).alias("_file")
        )
        for index, path in enumerate(files)
    ]
    rows = pl.concat(frames, how="vertical")
    run_ids = rows.get_column("run_id").unique().sort().to_list()
    if len(run_ids) > 1:
        raise RunDataError(f"{RunDir(run_path).results_dir}: shards from several runs: {', '.join(run_ids)}")
    duplicated = (
        rows.filter(pl.col("final"))
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
    return RunData(run_path, tuple(files), rows.drop("_file"), read_manifest(run_path))
