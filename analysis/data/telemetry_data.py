"""Reading a run's telemetry: `RUN_DIR/telemetry/*.parquet` in the long form of docs/DESIGN.md.

One row per sample: `run_id`, `source` (`nvml` or `prometheus`), `host`, `device` (GPU index or
target name), `t_s` (run seconds, the results' clock), `metric`, `value`; the contract and the
NVML metric names are replay/schemas/telemetry.py's (telemetry schema_version 1). Every file is
checked for its kind and version metadata, its columns and nulls; a bad file raises
TelemetryDataError naming the file, and the row and field where it applies. A run without
telemetry is not an error: `load_telemetry` says None.

Server metrics keep vLLM's own /metrics sample names; the ones the report draws are below.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.schemas.contract import METADATA_KIND_KEY, METADATA_VERSION_KEY
from shadowreplay.replay.schemas.run_dir import RunDir
from shadowreplay.replay.schemas.telemetry import ADDED_COLUMNS, KIND, READABLE_VERSIONS, TELEMETRY_SCHEMA

COLUMN_TYPES: dict[str, pl.DataType] = {
    # a pa.Array reads as a Series
    field.name: cast(pl.Series, pl.from_arrow(pa.array([], type=field.type))).dtype
    for field in TELEMETRY_SCHEMA
}
REQUIRED_FIELDS = ("source", "t_s", "metric", "value")

VLLM_KV_CACHE_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
"""vLLM's KV-cache usage gauge, a fraction in [0, 1] despite its name (v1 name first, then the older one)."""
VLLM_RUNNING = "vllm:num_requests_running"
VLLM_WAITING = "vllm:num_requests_waiting"


class TelemetryDataError(ShadowReplayError, ValueError):
    """A telemetry file that cannot be read as the long-form contract says."""


@dataclass(frozen=True)
class Telemetry:
    """The telemetry samples of one run (the contract's columns), from `files`."""

    files: tuple[Path, ...]
    samples: pl.DataFrame

    def source(self, source: str) -> pl.DataFrame:
        """The samples of one source (`nvml` or `prometheus`)."""
        return self.samples.filter(pl.col("source") == source)


def _read_file(path: Path) -> pl.DataFrame:
    try:
        parquet_file = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise TelemetryDataError(f"{path}: cannot read as Parquet: {exc}") from None
    meta = parquet_file.schema_arrow.metadata or {}
    kind = meta.get(METADATA_KIND_KEY)
    if kind != KIND.encode():
        raise TelemetryDataError(f"{path}: not a telemetry file (file metadata kind {kind!r}, expected {KIND!r})")
    version = meta.get(METADATA_VERSION_KEY)
    readable = [str(v) for v in READABLE_VERSIONS]
    if version is None or version.decode() not in readable:
        raise TelemetryDataError(
            f"{path}: telemetry schema_version {version!r}, this shadowreplay reads {', '.join(readable)}"
        )
    later = [name for name, added in ADDED_COLUMNS.items() if added > int(version.decode())]
    missing = [name for name in COLUMN_TYPES if name not in parquet_file.schema_arrow.names and name not in later]
    if missing:
        raise TelemetryDataError(
            f"{path}: telemetry file lacks columns {missing} (long form: {', '.join(COLUMN_TYPES)})"
        )
    try:
        table = parquet_file.read(columns=[name for name in COLUMN_TYPES if name not in later])
    except (OSError, pa.ArrowException) as exc:
        raise TelemetryDataError(f"{path}: cannot read: {exc}") from None
    for name in later:  # an older file: the columns added since read as null
        table = table.append_column(TELEMETRY_SCHEMA.field(name), pa.nulls(table.num_rows, pa.string()))
    for name in REQUIRED_FIELDS:
        column = table.column(name)
        if column.null_count:
            row = pc.index(pc.is_null(column), True).as_py()
            raise TelemetryDataError(f"{path}: row {row}: field {name} is null")
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    try:
        return frame.cast(COLUMN_TYPES)  # type: ignore[arg-type]
    except pl.exceptions.PolarsError as exc:
        raise TelemetryDataError(f"{path}: columns do not have the telemetry schema's types: {exc}") from None


def load_telemetry(run_dir: str | Path) -> Telemetry | None:
    """Every telemetry file of a run directory, checked and concatenated; None when the run has none."""
    files = RunDir(run_dir).telemetry_shards()
    if not files:
        return None
    samples = pl.concat([_read_file(path) for path in files], how="vertical")
    return Telemetry(tuple(files), samples)
