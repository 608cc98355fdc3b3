"""Reading a run directory for analysis: `RUN_DIR/results/*.parquet` and `RUN_DIR/manifest.json`.

Only Parquet and JSON are read here, so a report can be recomputed from a copied run directory on
any machine (no Ray, no runner, no client). Every shard is checked against the results contract
(replay/schemas/results.py, schema_version 3; earlier files, which lack the columns added since
(`raised` in 2, `replica` in 3), read with them null): kind and version metadata and columns from
the file's schema; required fields, statuses, run ids and one final row per request and target in
one pass over the columns they need; a bad shard raises RunDataError naming the file, and the row
and field where it applies.

Nothing else is read here: `RunData.scan` is a lazy scan of the shards (polars `scan_parquet`), and
each analysis reads only the columns and rows its own query asks for, so memory follows the query,
not the run's size. `rows` and `final_rows` collect the scan, for small runs and tests.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
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
FACT_COLUMNS = (*CHECKED_FIELDS, "tag", "replica")
"""What the check pass reads of every shard: the required fields, `tag` (which slices by tag exist) and
`replica` (how many replicas a target was spread over)."""
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
and `sweep` scan only these): the others are checked on reading but not kept."""


READ_THREADS = max(1, min(os.cpu_count() or 1, 4))
"""Shards (or targets) read at once: polars reads one file on one core, so passes over a run read several
files on threads; each thread holds one shard's rows (or one target's populations), so no more than 4."""


class RunDataError(ShadowReplayError, ValueError):
    """A run directory, results shard or manifest that cannot be read as the contract says."""


@dataclass(frozen=True)
class RunData:
    """The result rows and manifest of one run, as lazy scans and the facts the check pass found.

    `shards` holds one scan per results file (its `columns`, cast to the contract's types); `scan` is
    them all, every attempt; `final_scan` the one outcome per request and target that metrics are
    computed over (`scan` itself where every row is final). A query on them reads only what it asks
    for. `rows` and `final_rows` collect them (the whole run in memory: for small runs and tests).
    """

    run_dir: Path
    files: tuple[Path, ...]
    shards: tuple[pl.LazyFrame, ...]
    manifest: Manifest | None
    run_ids: tuple[str, ...]  # every run_id of the shards (read by the check pass, kept or not)
    row_count: int  # every row (attempt)
    final_count: int  # final rows
    target_names: tuple[str, ...]  # sorted
    tags: tuple[str, ...]  # every tag a row has, sorted (none: an untagged run)
    replicas: int = 1  # 1 + the highest replica index of a row (1: every target one endpoint)
    final_by_status: dict[str, int] = field(default_factory=dict)  # final rows per status (none: 0)

    @cached_property
    def scan(self) -> pl.LazyFrame:
        return pl.concat(self.shards, how="vertical") if len(self.shards) > 1 else self.shards[0]

    @property
    def has_tags(self) -> bool:
        return bool(self.tags)

    @property
    def has_replicas(self) -> bool:
        """Some target was sent to more than one replica (results schema 3's `replica`)."""
        return self.replicas > 1

    @property
    def every_row_final(self) -> bool:
        """One attempt per request and target (no retries, nothing interrupted)."""
        return self.final_count == self.row_count

    @cached_property
    def final_scan(self) -> pl.LazyFrame:
        return self.scan if self.every_row_final else self.scan.filter(pl.col("final"))

    @cached_property
    def rows(self) -> pl.DataFrame:
        return self.scan.collect()

    @cached_property
    def final_rows(self) -> pl.DataFrame:
        return self.rows if self.every_row_final else self.rows.filter(pl.col("final"))

    @property
    def run_id(self) -> str | None:
        return self.run_ids[0] if len(self.run_ids) == 1 else None

    @property
    def targets(self) -> list[str]:
        return list(self.target_names)

    @property
    def target_configs(self) -> dict[str, dict[str, Any]]:
        """The targets' public configs from the manifest (`targets` list: name, kind, model, base_url, ...), by name."""
        return self.manifest.target_configs if self.manifest is not None else {}

    def each_shard(self, query: Callable[[pl.LazyFrame], pl.LazyFrame]) -> Iterator[pl.DataFrame]:
        """`query` over each shard, collected one shard at a time and yielded in file order: for passes whose
        working set per row is larger than their result (token lists). READ_THREADS shards are read at once on
        background threads (polars reads one file on one core, and releases the GIL), so memory holds about
        READ_THREADS + 1 shards' rows of the query."""
        with ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="shard-reader") as readers:
            pending: deque[Future[pl.DataFrame]] = deque()
            for shard in self.shards:
                pending.append(readers.submit(query(shard).collect, engine="streaming"))
                if len(pending) > READ_THREADS:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    @cached_property
    def requests_without_final_row(self) -> int:
        """(target, request_id) pairs that have attempts but no final row (an interrupted run).

        Only the pairs of non-final rows can lack one, so only those are looked up."""
        if self.every_row_final:
            return 0
        keys = ["target", "request_id"]
        retried = self.scan.filter(~pl.col("final")).select(keys).unique().collect()
        wanted = retried.get_column("request_id").implode()
        finished = self.final_scan.filter(pl.col("request_id").is_in(wanted)).select(keys).collect()
        return retried.join(finished, on=keys, how="anti").height


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


def _checked_schema(path: Path) -> tuple[pa.Schema, list[str]]:
    """A shard's Parquet schema, checked for the results kind, a readable version and every column that
    version has; with the columns added after its version (read as null)."""
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
    later = [name for name, added in ADDED_COLUMNS.items() if added > int(version.decode())]
    missing = [name for name in RESULTS_SCHEMA.names if name not in schema.names and name not in later]
    if missing:
        raise RunDataError(f"{path}: results shard lacks columns {missing}")
    return schema, later


def _has_contract_types(schema: pa.Schema, columns: Sequence[str]) -> bool:
    return all(schema.field(name).type.equals(RESULTS_SCHEMA.field(name).type) for name in columns)


def _with_later_columns(frame: pl.LazyFrame | pl.DataFrame, wanted: Sequence[str], present: Sequence[str]) -> Any:
    """`frame` with the columns added after its shard's version, null, in `wanted` order."""
    later = [pl.lit(None, dtype=RESULTS_DTYPES[name]).alias(name) for name in wanted if name not in present]
    return frame.with_columns(later).select(wanted)


def shard_scan(path: Path, columns: Sequence[str]) -> pl.LazyFrame:
    """A lazy scan of one results shard with `columns` in the contract's types, after checking its schema
    (not its rows: `load_run` checks those). A shard whose columns already have the schema's types (every
    shard shadowreplay writes) is scanned by polars from the file, reading only what a query asks for; any
    other is read by pyarrow and cast now."""
    schema, _ = _checked_schema(path)
    present = [name for name in columns if name in schema.names]
    if _has_contract_types(schema, present):
        scan = pl.scan_parquet(path).select(present)
    else:
        scan = _read_and_cast(path, present).lazy()
    return cast(pl.LazyFrame, _with_later_columns(scan, columns, present))


def read_result_shard(path: Path, columns: Sequence[str]) -> pl.DataFrame:
    """One results shard, checked against RESULTS_SCHEMA and cast to its types, with `columns` only, read now.

    The required fields and `status` are checked whether or not they are among `columns`, naming the first
    bad row."""
    schema, _ = _checked_schema(path)
    wanted = list(dict.fromkeys([*columns, *CHECKED_FIELDS]))
    present = [name for name in wanted if name in schema.names]
    try:
        if _has_contract_types(schema, present):
            frame = pl.read_parquet(path, columns=present)
        else:
            frame = _read_and_cast(path, present)
    except (OSError, pa.ArrowException, pl.exceptions.PolarsError) as exc:
        raise RunDataError(f"{path}: cannot read: {exc}") from None
    frame = cast(pl.DataFrame, _with_later_columns(frame, wanted, present))
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


def read_manifest(run_dir: str | Path, unreadable: Literal["raise", "none"] = "raise") -> Manifest | None:
    """RUN_DIR/manifest.json as a Manifest, or None when the run has none (or, with `unreadable="none"`,
    when it cannot be read)."""
    try:
        return RunDir(run_dir).read_manifest()
    except RunDirError as exc:
        if unreadable == "none":
            return None
        raise RunDataError(str(exc)) from None


FINAL_KEY_HASH = pl.col("request_id").hash().xor(pl.col("target").hash()).filter(pl.col("final"))
"""A 64-bit hash of each final row's (request_id, target): two equal ones may be one request's two final rows."""


def _shard_facts(scan: pl.LazyFrame) -> pl.LazyFrame:
    """One row of what the check pass needs to know of a shard: its row counts, the null count of each
    required field, statuses outside the contract, its run ids, targets and tags, and the FINAL_KEY_HASH of
    its final rows (one list), all from one read of the columns."""
    return scan.select(
        FINAL_KEY_HASH.implode().alias("final key hashes"),
        pl.len().alias("rows"),
        pl.col("final").sum().alias("final"),
        *(pl.col(name).null_count().alias(f"null {name}") for name in REQUIRED_FIELDS),
        (~pl.col("status").is_in(STATUSES)).sum().alias("unknown statuses"),
        pl.col("run_id").drop_nulls().unique().implode().alias("run_ids"),
        pl.col("target").drop_nulls().unique().implode().alias("targets"),
        pl.col("tag").drop_nulls().unique().implode().alias("tags"),
        pl.col("replica").max().alias("max replica"),
        *((pl.col("final") & (pl.col("status") == status)).sum().alias(f"final {status}") for status in STATUSES),
    )


def load_run(
    run_dir: str | Path,
    include_output_text: bool = False,
    columns: Sequence[str] | None = None,
    *,
    leave_out: Collection[str] = (),
    unreadable_manifest: Literal["raise", "none"] = "raise",
) -> RunData:
    """Check every results shard and read the manifest of a run directory; the rows stay in the files.

    `columns`: the result columns the scans hold (e.g. ANALYSIS_COLUMNS); default every column but
    LARGE_COLUMNS (and those too with `include_output_text`). Every shard is checked whatever is kept, in
    one pass over FACT_COLUMNS (a shard found bad is then read again to name its first bad row; rows are
    numbered from 0 within their file). Raises RunDataError when there are no shards, a shard breaks the
    contract, the shards mix runs, or a request has two final rows for one target.

    For a report on an incomplete run (replay/schemas/run_completeness.py, which says what is missing):
    `leave_out` names result shards (file names in RUN_DIR/results, the torn ones) not to read, and
    `unreadable_manifest="none"` reads a manifest that cannot be read as none.
    """
    run_path = Path(run_dir)
    files = [path for path in result_files(run_path) if path.name not in leave_out]
    if not files:
        raise RunDataError(f"{RunDir(run_path).results_dir}: no readable result shards (every one is torn)")
    if columns is None:
        columns = [name for name in RESULTS_SCHEMA.names if include_output_text or name not in LARGE_COLUMNS]
    wanted = list(dict.fromkeys([*columns, *FACT_COLUMNS]))
    scans = [shard_scan(path, wanted) for path in files]
    try:
        with ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="shard-checker") as checkers:
            found = list(checkers.map(lambda scan: _shard_facts(scan).collect(engine="streaming"), scans))
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise RunDataError(f"{RunDir(run_path).results_dir}: cannot read: {exc}") from None
    hashes = np.concatenate([frame.get_column("final key hashes")[0].to_numpy() for frame in found])
    facts = [frame.drop("final key hashes").row(0, named=True) for frame in found]
    del found
    for path, fact in zip(files, facts, strict=True):
        if fact["unknown statuses"] or any(fact[f"null {name}"] for name in REQUIRED_FIELDS):
            read_result_shard(path, CHECKED_FIELDS)  # names the first bad row
            raise RunDataError(f"{path}: a required field is null or a status is unknown")
    run_ids = sorted({run_id for fact in facts for run_id in fact["run_ids"]})
    if len(run_ids) > 1:
        raise RunDataError(f"{RunDir(run_path).results_dir}: shards from several runs: {', '.join(run_ids)}")
    _check_one_final_row(run_path, files, scans, hashes)
    return RunData(
        run_dir=run_path,
        files=tuple(files),
        shards=tuple(scan.select(columns) for scan in scans),
        manifest=read_manifest(run_path, unreadable=unreadable_manifest),
        run_ids=tuple(run_ids),
        row_count=sum(fact["rows"] for fact in facts),
        final_count=sum(fact["final"] for fact in facts),
        target_names=tuple(sorted({target for fact in facts for target in fact["targets"]})),
        tags=tuple(sorted({tag for fact in facts for tag in fact["tags"]})),
        replicas=1 + max((fact["max replica"] for fact in facts if fact["max replica"] is not None), default=0),
        final_by_status={
            status: count for status in STATUSES if (count := sum(fact[f"final {status}"] for fact in facts))
        },
    )


def _check_one_final_row(run_path: Path, files: list[Path], scans: list[pl.LazyFrame], hashes: np.ndarray) -> None:
    """RunDataError when a (target, request_id) has two final rows. The FINAL_KEY_HASH of every final row
    (`hashes`, from the check pass: memory holds the hashes, not the strings), sorted, clears the common case
    (no two equal); a collision, or a real duplicate, is then looked up exactly."""
    hashes.sort()  # a sort of integers, cheaper than a hash table of millions of keys
    if not (hashes[1:] == hashes[:-1]).any():
        return
    numbered = pl.concat(
        [
            scan.filter(pl.col("final")).select("target", "request_id", pl.lit(i, dtype=pl.Int32).alias("_file"))
            for i, scan in enumerate(scans)
        ]
    )
    duplicated = (
        numbered.group_by("target", "request_id")
        .agg(pl.len().alias("n"), pl.col("_file").unique().sort().alias("files"))
        .filter(pl.col("n") > 1)
        .sort("target", "request_id")
        .collect()
    )
    if duplicated.height:
        first = duplicated.row(0, named=True)
        names = ", ".join(files[i].name for i in first["files"])
        raise RunDataError(
            f"{RunDir(run_path).results_dir}: request {first['request_id']} has {first['n']} final rows "
            f"for target {first['target']} (in {names}); {duplicated.height} request(s) affected"
        )
