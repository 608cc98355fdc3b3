"""The one owner of a run directory's layout (docs/DESIGN.md, "Run directory").

```
RUN_DIR/
  manifest.json          Manifest (replay/schemas/manifest.py), secrets removed
  plan/<worker>.parquet                    each worker's share of the plan (replay/run/plan_pieces.py);
                                           together, the run's whole plan (each request once)
  plan/<group>/<worker>.parquet            a lost worker's replacement's share (`replacements`), a
                                           resume segment's shares (`segment-<k>`)
  results/part-<worker>-<seq>.parquet      result shards (replay/schemas/results.py)
  results/torn/                            shards that could not be read, set aside by `--resume`
  telemetry/<sampler>-<seq>.parquet        telemetry shards (replay/schemas/telemetry.py)
  summary.json           the report's summary (analysis/summary/)
  report.html            the report's page (analysis/report/)
  vllm-<target>.log      the log of each vLLM server the run started
  requests.parquet       a shadow's request facts: references, production's answers (replay/schemas/shadow_requests.py)
  prompt_format.json     a shadow's chat-template check (replay/targets/prompt_format.py), with
  prompt_format_tokens.parquet  each request's rendered length per target
  judge-log.parquet      a shadow's judge prompts (one per answer), replayed into judge/ (a RUN_DIR)
SWEEP_DIR/
  curve.parquet  summary.json  report.html
  points/<nn>-<level>/   one RUN_DIR per load point
GATES_DIR/ (a shadow's judgement; RUN_DIR itself by default)
  gates.json  summary.md  summary.html
  pairs.parquet          one row per request: both targets' paired measures (analysis/shadow/paired_requests.py)
  windows.parquet        per window and target: the figures summary.md shows (analysis/shadow/windows.py)
```

No other module spells these names: writers ask a `RunDir` (or `SweepDir`) for a path or a
writer, readers for the committed shards. Shards are written by the one `ShardWriter`
(replay/schemas/shards.py), committed atomically; `scan_results()` reads the key columns of every
result shard (a shard that cannot be read is reported as torn, never trusted), and
`final_rows()` says which (request, target) pairs already have their final row, for resuming a run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.schemas.manifest import Manifest
from shadowreplay.replay.schemas.results import DICTIONARY_COLUMNS, RESULTS_SCHEMA
from shadowreplay.replay.schemas.shards import (
    COMPRESSION,
    SHARD_SUFFIX,
    ShardWriter,
    commit_file,
    committed_shards,
)
from shadowreplay.replay.secrets import Scrubber

RESULTS_DIRNAME = "results"
TORN_DIRNAME = "torn"
PLAN_DIRNAME = "plan"
TELEMETRY_DIRNAME = "telemetry"
MANIFEST_NAME = "manifest.json"
SUMMARY_NAME = "summary.json"
REPORT_NAME = "report.html"
CURVE_NAME = "curve.parquet"
POINTS_DIRNAME = "points"
SHADOW_REQUESTS_NAME = "requests.parquet"
SHADOW_REQUESTS_DIRNAME = "requests"
JUDGE_DIRNAME = "judge"
JUDGE_LOG_NAME = "judge-log.parquet"
GATES_NAME = "gates.json"
SHADOW_SUMMARY_MD = "summary.md"
SHADOW_SUMMARY_HTML = "summary.html"
SHADOW_WINDOWS_NAME = "windows.parquet"
SHADOW_PAIRS_NAME = "pairs.parquet"


class RunDirError(ShadowReplayError):
    """A run directory that cannot be used as asked: it already holds results, or its manifest is
    not readable."""


def write_text_atomically(path: Path, text: str) -> None:
    """`text` into `path` through a hidden temporary file and a rename: readers see the old file
    or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


FINAL_KEYS = pa.schema([("request_id", pa.string()), ("target", pa.string()), ("status", pa.string())])


@dataclass(frozen=True)
class ResultScan:
    """The key columns of every final row in the committed result shards that could be read, and
    the shards that could not (`torn`: path and why), which no index trusts."""

    finals: pa.Table  # FINAL_KEYS: request_id, target, status of every final row
    readable: list[Path]
    torn: list[tuple[Path, str]]

    def by_status(self) -> dict[str, int]:
        """Final rows by status, as the rows on disk have them."""
        counts = self.finals.group_by("status").aggregate([("status", "count")]).to_pylist()
        return {row["status"]: row["status_count"] for row in counts}

    def duplicate_finals(self) -> int:
        """Final rows beyond the first of their (request_id, target): 0 in a sound run."""
        pairs = self.finals.group_by(["request_id", "target"]).aggregate([]).num_rows
        return self.finals.num_rows - pairs


@dataclass(frozen=True)
class FinalRowIndex:
    """Which (request_id, target) pairs have their final row on disk. Held as Arrow columns, so an
    index of millions of rows holds no Python object per row."""

    finals: pa.Table  # request_id, target (strings) of every final row

    def __len__(self) -> int:
        return self.finals.num_rows

    def __contains__(self, pair: object) -> bool:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            return False
        request_id, target = pair
        return not self.without_final(pa.array([request_id], pa.string()), target)[0].as_py()

    def without_final(self, request_ids: pa.Array | pa.ChunkedArray, target: str) -> pa.Array:
        """A mask over `request_ids`: True where that request has no final row for `target`."""
        targets = pc.cast(self.finals.column("target"), pa.string())
        done = self.finals.column("request_id").filter(pc.equal(targets, target))
        ids = pc.cast(request_ids, pa.string())
        return pc.invert(pc.is_in(ids, value_set=pc.cast(done, pa.string()).combine_chunks()))

    def missing(self, request_ids: list[str], targets: list[str]) -> list[tuple[str, str]]:
        """The (request_id, target) pairs of a plan that have no final row yet, in plan order."""
        ids = pa.array(request_ids, pa.string())
        masks = {target: self.without_final(ids, target).to_pylist() for target in targets}
        return [(r, t) for i, r in enumerate(request_ids) for t in targets if masks[t][i]]


class _OutputDir:
    """What run and sweep directories share: a path, a summary and a page."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_NAME

    @property
    def report_path(self) -> Path:
        return self.path / REPORT_NAME

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME


class RunDir(_OutputDir):
    """A run directory: its paths, its writers, its manifest and its index of final rows."""

    # -- paths -----------------------------------------------------------------------------------
    @property
    def results_dir(self) -> Path:
        return self.path / RESULTS_DIRNAME

    @property
    def telemetry_dir(self) -> Path:
        return self.path / TELEMETRY_DIRNAME

    @property
    def plan_dir(self) -> Path:
        return self.path / PLAN_DIRNAME

    def plan_shard_path(self, worker: str, group: str | None = None) -> Path:
        """Where `worker`'s share of the plan is written for it to read (replay/run/plan_pieces.py);
        `group`: a subdirectory for shares that repeat requests of the whole plan (a replacement
        worker's, a resume segment's)."""
        return (self.plan_dir / group if group else self.plan_dir) / f"{worker}.parquet"

    def plan_shards(self) -> list[Path]:
        """The first start's plan shards: together, the run's whole plan, each request once."""
        return committed_shards(self.plan_dir)

    def write_plan_shard(self, worker: str, shard: pa.Table, row_group_rows: int, group: str | None = None) -> Path:
        """Write `worker`'s share of the plan, `row_group_rows` rows per row group (the pieces its
        worker reads); whole or not at all (written aside, then committed as shards are: commit_file)."""
        path = self.plan_shard_path(worker, group)
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.writing")
        pq.write_table(shard, aside, row_group_size=row_group_rows)
        commit_file(aside, path)
        return path

    def server_log_path(self, target: str, replica: int | None = None) -> Path:
        """The log file of the vLLM server started for `target` (of its replica `replica`, where it has several)."""
        return self.path / (f"vllm-{target}.log" if replica is None else f"vllm-{target}-{replica}.log")

    # -- shards ----------------------------------------------------------------------------------
    @property
    def shadow_requests_path(self) -> Path:
        return self.path / SHADOW_REQUESTS_NAME

    @property
    def shadow_requests_dir(self) -> Path:
        """A live shadow's request facts, one file a capture rotation (replay/capture/mirror.py)."""
        return self.path / SHADOW_REQUESTS_DIRNAME

    def shadow_request_files(self) -> list[Path]:
        """The run's request facts: requests.parquet (a shadow's) and the committed files of requests/ (a
        capture mirror's), by name."""
        whole = [self.shadow_requests_path] if self.shadow_requests_path.is_file() else []
        return whole + committed_shards(self.shadow_requests_dir)

    @property
    def judge_dir(self) -> RunDir:
        """A shadow's judge run: the rubric prompts of every answer replayed against the judge target."""
        return RunDir(self.path / JUDGE_DIRNAME)

    @property
    def judge_log_path(self) -> Path:
        """The judge's traffic log: one rubric prompt per answer judged."""
        return self.path / JUDGE_LOG_NAME

    @property
    def prompt_format_dir(self) -> Path:
        """Where the chat-template check writes prompt_format.json and prompt_format_tokens.parquet."""
        return self.path

    def result_shards(self) -> list[Path]:
        return committed_shards(self.results_dir)

    def telemetry_shards(self) -> list[Path]:
        return committed_shards(self.telemetry_dir)

    def has_results(self) -> bool:
        return bool(self.result_shards())

    def create_new(self) -> RunDir:
        """Make the directory for a new run; a directory that already holds results is refused."""
        if self.has_results():
            raise RunDirError(f"{self.path} already holds results; choose a new run directory")
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def result_writer(
        self, worker: str, *, max_rows: int = 1000, max_age_s: float = 5.0, background: bool = False
    ) -> ShardWriter:
        """The writer of one worker's result shards, `results/part-<worker>-<seq>.parquet`, each grown
        to `max_rows` rows (committed again every `max_age_s` until then: replay/schemas/shards.py)."""
        return ShardWriter(
            self.results_dir,
            RESULTS_SCHEMA,
            f"part-{worker}",
            max_rows,
            max_age_s,
            background=background,
            dictionary_columns=DICTIONARY_COLUMNS,
            grow=True,  # a slow run commits every max_age_s without a file every max_age_s
        )

    def scan_results(self) -> ResultScan:
        """The final rows' keys of every committed result shard; a shard whose footer or key columns
        cannot be read (cut short by a crashed disk, damaged) is listed as torn, with the reason."""
        finals = [FINAL_KEYS.empty_table()]
        readable: list[Path] = []
        torn: list[tuple[Path, str]] = []
        for shard in self.result_shards():
            try:
                table = pq.read_table(shard, columns=["request_id", "target", "final", "status"])
            except (OSError, pa.ArrowException) as exc:
                torn.append((shard, f"{type(exc).__name__}: {exc}"))
                continue
            readable.append(shard)
            finals.append(table.filter(table.column("final")).select(FINAL_KEYS.names).cast(FINAL_KEYS))
        return ResultScan(pa.concat_tables(finals), readable, torn)

    def final_rows(self) -> FinalRowIndex:
        """The (request_id, target) pairs whose final row is in a committed, readable result shard."""
        return FinalRowIndex(self.scan_results().finals.select(["request_id", "target"]))

    def set_aside_torn(self, torn: list[tuple[Path, str]]) -> list[Path]:
        """Move torn shards into results/torn/ (kept for a post-mortem, never read again) and delete
        the hidden temporary files of writes that never committed; call only while nothing writes."""
        aside = self.results_dir / TORN_DIRNAME
        moved = []
        for shard, _why in torn:
            aside.mkdir(parents=True, exist_ok=True)
            target = aside / shard.name
            os.replace(shard, target)
            moved.append(target)
        if self.results_dir.is_dir():
            for stale in self.results_dir.glob(f".*{SHARD_SUFFIX}.tmp"):
                stale.unlink(missing_ok=True)
        return moved

    def retire_final_rows(self, statuses: tuple[str, ...]) -> int:
        """Mark every final row whose status is one of `statuses` as no longer final (its shard
        rewritten whole, atomically: commit_file), so that a resume's new row is the one final row
        of its pair; returns the rows retired. A crash in between leaves such pairs without a final
        row, which the next resume replays: never two final rows."""
        retired = 0
        wanted = pa.array(statuses, pa.string())
        for shard in self.result_shards():
            keys = pq.read_table(shard, columns=["final", "status"])
            status = pc.cast(keys.column("status"), pa.string())
            hit = pc.and_(keys.column("final"), pc.is_in(status, value_set=wanted))
            count = pc.sum(hit).as_py() or 0
            if not count:
                continue
            file = pq.ParquetFile(shard)
            table = file.read()
            position = table.schema.get_field_index("final")
            final = pc.and_not(table.column("final"), hit)
            table = table.set_column(position, file.schema_arrow.field("final"), final)
            aside = shard.with_name(f".{shard.name}.tmp")
            dictionary = [c for c in DICTIONARY_COLUMNS if c in table.column_names]
            pq.write_table(table, aside, compression=COMPRESSION, use_dictionary=dictionary)
            commit_file(aside, shard)
            retired += count
        return retired

    # -- manifest --------------------------------------------------------------------------------
    def write_manifest(self, manifest: Manifest, scrubber: Scrubber) -> Path:
        """manifest.json with every secret the scrubber knows removed, written atomically."""
        self.path.mkdir(parents=True, exist_ok=True)
        data = scrubber.value(manifest.model_dump(mode="json"))
        write_text_atomically(self.manifest_path, json.dumps(data, indent=2) + "\n")
        return self.manifest_path

    def read_manifest_json(self) -> dict[str, Any] | None:
        """manifest.json as a JSON object, or None when the run has none."""
        path = self.manifest_path
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunDirError(f"{path}: not readable JSON: {exc}") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{path}: expected a JSON object, found {type(data).__name__}")
        return data

    def read_manifest(self) -> Manifest | None:
        """manifest.json as a Manifest (fields this version does not know are ignored), or None."""
        data = self.read_manifest_json()
        if data is None:
            return None
        try:
            return Manifest.from_json_dict(data)
        except ValueError as exc:
            raise RunDirError(f"{self.manifest_path}: not a manifest: {exc}") from None

    def update_manifest(self, scrubber: Scrubber, **fields: Any) -> Manifest | None:
        """Set `fields` in an existing manifest.json (None when there is none; nothing is made)."""
        manifest = self.read_manifest()
        if manifest is None:
            return None
        updated = Manifest.model_validate(manifest.model_dump() | fields)
        self.write_manifest(updated, scrubber)
        return updated


class GatesDir(_OutputDir):
    """Where a shadow's judgement goes (`shadow`, `gate -o`): gates.json, summary.md and summary.html, and the
    rows their figures come from."""

    @property
    def gates_path(self) -> Path:
        return self.path / GATES_NAME

    @property
    def summary_md_path(self) -> Path:
        return self.path / SHADOW_SUMMARY_MD

    @property
    def summary_html_path(self) -> Path:
        return self.path / SHADOW_SUMMARY_HTML

    @property
    def windows_path(self) -> Path:
        return self.path / SHADOW_WINDOWS_NAME

    @property
    def pairs_path(self) -> Path:
        return self.path / SHADOW_PAIRS_NAME


class SweepDir(_OutputDir):
    """A sweep directory: its curve, summary, page and manifest, and one RunDir per load point."""

    @property
    def curve_path(self) -> Path:
        return self.path / CURVE_NAME

    def point(self, index: int, label: str) -> RunDir:
        """The run directory of load point `index` (labelled by its level, e.g. `2.5rps`)."""
        return RunDir(self.path / POINTS_DIRNAME / f"{index:02d}-{label}")

    def relative(self, run_dir: RunDir) -> str:
        """A point's directory as the curve records it, relative to the sweep directory."""
        return str(run_dir.path.relative_to(self.path))
