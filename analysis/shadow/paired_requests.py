"""The paired measures of a shadow comparison: one row per request holding what each side (the baseline,
the candidate and, with --aa, the baseline's second copy) made of it, read from the run's final result
rows and its request facts (RUN_DIR/requests.parquet, replay/schemas/shadow_requests.py).

Per side, with a one-letter prefix (`b_` baseline, `c_` candidate, `a_` the A/A copy):
- `status`, `error` (status != ok: metrics.table is_error), `ttft_ms`, `tpot_ms`, `e2e_ms` (null unless
  the request is ok: the latency population of docs/DESIGN.md), `output_tokens` (metrics.table
  output_tokens), `truncated` (finish reason `length`), `refusal` (scorers.refusals over the answer),
  `json_valid` (scorers.json_valid), `answered_json` (scorers.looks_like_json), and one `correct_<k>` per
  scorer k of the gates (scorers.score against the log's `reference`; null without one; a `judge` scorer's
  from the judge's verdicts). The answers are scored shard by shard: their text is never held whole.
Per request: `request_id`, `tag`, `arrival_s` (the log's timeline) and `arrival_time`, `scheduled_s` (the
replay's),
`known_s` (when every side's outcome was known: the latest `done_s`, else `scheduled_s`: the order a
live shadow learns its evidence in), `json_expected` (the request asked for JSON, or the baseline
answered JSON), `length_ratio` (candidate output tokens over the baseline's, both ok).

`--baseline production`: the baseline side is what the log recorded: production's answer
(`response_text`), its status (`prod_status`, else ok), latencies (`prod_ttft_ms`, `prod_e2e_ms`) and
output tokens (`completion_tokens`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from shadowreplay.analysis.data.run_data import RunData, RunDataError
from shadowreplay.analysis.metrics.table import is_error, output_tokens, tpot_ms
from shadowreplay.analysis.shadow.scorers import (
    ScorerSpec,
    asks_for_json,
    json_valid,
    looks_like_json,
    refusals,
    score,
)
from shadowreplay.replay.schemas.contract import METADATA_KIND_KEY
from shadowreplay.replay.schemas.shadow_requests import KIND as REQUESTS_KIND
from shadowreplay.replay.schemas.shadow_requests import PRODUCTION_SIDE, SHADOW_REQUESTS_SCHEMA

PRODUCTION = PRODUCTION_SIDE
"""The baseline name that means the answers captured in the log, not a replayed target."""
SIDES = {"baseline": "b", "candidate": "c", "aa": "a"}
SIDE_COLUMNS = (
    "status",
    "error",
    "ttft_ms",
    "tpot_ms",
    "e2e_ms",
    "output_tokens",
    "truncated",
    "refusal",
    "json_valid",
    "answered_json",
)
RESULT_COLUMNS = (
    "request_id",
    "target",
    "scheduled_s",
    "done_s",
    "status",
    "ttft_ms",
    "e2e_ms",
    "completion_tokens",
    "client_tokens",
    "finish_reason",
    "output_text",
    "tag",
)


class ShadowDataError(RunDataError):
    """A run directory that cannot be judged as asked (a target it lacks, no request facts where needed)."""


@dataclass(frozen=True)
class Sides:
    """The targets compared: `baseline` (a target's name, or PRODUCTION), `candidate`, and `aa` (the baseline's
    second copy, for the noise floor) or None."""

    baseline: str
    candidate: str
    aa: str | None = None

    @property
    def named(self) -> dict[str, str]:
        """prefix -> target name, for the sides present."""
        found = {"b": self.baseline, "c": self.candidate}
        if self.aa is not None:
            found["a"] = self.aa
        return found


def read_shadow_requests(paths: Path | Sequence[Path]) -> pl.DataFrame | None:
    """The run's request facts (RUN_DIR/requests.parquet, or the files RunDir.shadow_request_files lists) as
    one polars frame, each file checked for its kind; None where there is none."""
    files = [p for p in ([paths] if isinstance(paths, Path) else paths) if p.is_file()]
    if not files:
        return None
    frames = []
    for path in files:
        schema = pq.read_schema(path)
        kind = (schema.metadata or {}).get(METADATA_KIND_KEY)
        if kind != REQUESTS_KIND.encode():
            raise ShadowDataError(f"{path}: not a shadow requests file (kind {kind!r})")
        missing = [name for name in SHADOW_REQUESTS_SCHEMA.names if name not in schema.names]
        if missing:
            raise ShadowDataError(f"{path}: lacks columns {missing}")
        frames.append(pl.read_parquet(path, columns=SHADOW_REQUESTS_SCHEMA.names))
    return pl.concat(frames) if len(frames) > 1 else frames[0]


def _side_frame(
    frame: pl.LazyFrame,
    prefix: str,
    scorers: Sequence[ScorerSpec],
    phrases: Sequence[str],
    verdicts: pl.DataFrame | None,
) -> pl.DataFrame:
    """One side's measures by request_id (module docstring), from rows holding RESULT_COLUMNS and `reference`;
    `verdicts` (request_id, correct): the judge's on this side's answers, for a `judge` scorer."""
    ok = pl.col("status") == "ok"
    side = frame.select(
        "request_id",
        "scheduled_s",
        "done_s",
        pl.col("tag").cast(pl.String),
        "reference",
        pl.col("output_text").cast(pl.String),
        pl.col("status").cast(pl.String),
        is_error().alias("error"),
        pl.when(ok).then(pl.col("ttft_ms")).alias("ttft_ms"),
        pl.when(ok).then(tpot_ms()).alias("tpot_ms"),
        pl.when(ok).then(pl.col("e2e_ms")).alias("e2e_ms"),
        output_tokens().alias("output_tokens"),
        (pl.col("finish_reason").cast(pl.String) == "length").fill_null(False).alias("truncated"),
    ).collect()
    texts = side.get_column("output_text")
    references = side.get_column("reference")
    added = [
        refusals(texts, phrases).alias("refusal"),
        json_valid(texts).alias("json_valid"),
        looks_like_json(texts).fill_null(False).alias("answered_json"),
    ]
    added += [
        score(spec, texts, references).alias(f"correct_{k}") for k, spec in enumerate(scorers) if spec.kind != "judge"
    ]
    side = side.with_columns(added)
    for k, spec in enumerate(scorers):
        if spec.kind == "judge":
            judged = (
                verdicts
                if verdicts is not None
                else pl.DataFrame(schema={"request_id": pl.String, "correct": pl.Boolean})
            )
            side = side.join(
                judged.select("request_id", pl.col("correct").alias(f"correct_{k}")), on="request_id", how="left"
            )
    keep = ["request_id", *SIDE_COLUMNS, *(f"correct_{k}" for k in range(len(scorers)))]
    kept_for_pairing = ("scheduled_s", "done_s", "tag")  # dropped once the sides are joined
    return side.select(
        *(pl.col(name).alias(name if name == "request_id" else f"{prefix}_{name}") for name in keep),
        *(pl.col(name).alias(f"{prefix}_{name}") for name in kept_for_pairing),
    )


def _check_target(run: RunData, target: str) -> None:
    if target not in run.target_names:
        raise ShadowDataError(
            f"{run.run_dir}: no target named {target!r} in this run (targets: {', '.join(run.target_names)})"
        )


def _target_rows(run: RunData, target: str) -> pl.LazyFrame:
    _check_target(run, target)
    return run.final_scan.filter(pl.col("target") == target).select(RESULT_COLUMNS)


def _target_shards(run: RunData, target: str) -> Iterator[pl.DataFrame]:
    """The target's final rows, shard by shard (RunData.each_shard): a side's answers are scored a few shards at
    a time, so the answers' text is never held for the whole run."""
    _check_target(run, target)
    yield from run.each_shard(
        lambda shard: shard.filter(pl.col("final") & (pl.col("target") == target)).select(RESULT_COLUMNS)
    )


def _production_rows(requests: pl.DataFrame, scheduled: pl.LazyFrame) -> pl.LazyFrame:
    """The log's own record as a side: production's answer, status, latencies and output tokens."""
    return (
        requests.lazy()
        .join(scheduled, on="request_id", how="inner")
        .select(
            "request_id",
            "scheduled_s",
            pl.lit(None, dtype=pl.Float64).alias("done_s"),
            pl.col("prod_status").fill_null("ok").alias("status"),
            pl.col("prod_ttft_ms").alias("ttft_ms"),
            pl.col("prod_e2e_ms").alias("e2e_ms"),
            pl.col("completion_tokens"),
            pl.lit(None, dtype=pl.Int32).alias("client_tokens"),
            pl.lit(None, dtype=pl.String).alias("finish_reason"),
            pl.col("response_text").alias("output_text"),
            "tag",
        )
    )


def _with_references(rows: pl.LazyFrame, facts: pl.LazyFrame | None) -> pl.LazyFrame:
    if facts is None:
        return rows.with_columns(pl.lit(None, dtype=pl.String).alias("reference"))
    return rows.join(facts.select("request_id", "reference"), on="request_id", how="left")


def paired_requests(
    run: RunData,
    sides: Sides,
    scorers: Sequence[ScorerSpec],
    refusal_phrases: Sequence[str],
    requests: pl.DataFrame | None,
    judge_verdicts: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The paired measures (module docstring) of every request that each side has a final row for, ordered by
    `known_s`. `requests`: the run's request facts (read_shadow_requests), needed for references, JSON requests
    and `--baseline production`; without them accuracy is null and JSON is expected only where the baseline
    answered JSON. `judge_verdicts` (analysis/shadow/judge_verdicts.py): the judge's verdict on each side's
    answers (`target` PRODUCTION for the log's own), for `judge` scorers; an answer it did not judge is null."""
    if sides.baseline == PRODUCTION and requests is None:
        raise ShadowDataError(
            f"{run.run_dir}: --baseline production needs the log's answers (requests.parquet, written by "
            "`shadowreplay shadow`)"
        )
    facts = (
        requests.select("request_id", "reference", "arrival_s", "arrival_time", "params").lazy()
        if requests is not None
        else None
    )
    frames: dict[str, pl.DataFrame] = {}
    for prefix, target in sides.named.items():
        if prefix == "b" and target == PRODUCTION:
            assert requests is not None
            scheduled = _target_rows(run, sides.candidate).select("request_id", "scheduled_s")
            pieces: Iterable[pl.LazyFrame] = [_production_rows(requests, scheduled)]
        else:
            pieces = (shard.lazy() for shard in _target_shards(run, target))
        side_verdicts = (
            judge_verdicts.filter(pl.col("target") == target).select("request_id", "correct")
            if judge_verdicts is not None
            else None
        )
        parts = [
            _side_frame(_with_references(rows, facts), prefix, scorers, refusal_phrases, side_verdicts)
            for rows in pieces
        ]
        frames[prefix] = pl.concat(parts, how="vertical_relaxed")  # a shard without the target: Null columns
    paired = frames["c"].join(frames["b"], on="request_id", how="inner")
    if "a" in frames:
        paired = paired.join(frames["a"], on="request_id", how="inner")
    done = [pl.col(f"{prefix}_done_s") for prefix in frames]
    paired = paired.with_columns(
        pl.col("c_scheduled_s").alias("scheduled_s"),
        pl.max_horizontal(done).fill_null(pl.col("c_scheduled_s")).alias("known_s"),
        pl.coalesce(pl.col("c_tag"), pl.col("b_tag")).alias("tag"),
    )
    if facts is not None:
        paired = paired.join(
            facts.select("request_id", "arrival_s", "arrival_time", "params").collect(), on="request_id", how="left"
        )
        asked = asks_for_json(paired.get_column("params"))
        paired = paired.with_columns(asked.alias("asked_json")).drop("params")
    else:
        paired = paired.with_columns(
            pl.lit(None, dtype=pl.Float64).alias("arrival_s"),
            pl.lit(None, dtype=pl.Datetime("us", "UTC")).alias("arrival_time"),
            pl.lit(False).alias("asked_json"),
        )
    ok_both = (pl.col("b_status") == "ok") & (pl.col("c_status") == "ok") & (pl.col("b_output_tokens") > 0)
    paired = paired.with_columns(
        (pl.col("asked_json") | pl.col("b_answered_json")).alias("json_expected"),
        pl.when(ok_both)
        .then(pl.col("c_output_tokens").cast(pl.Float64) / pl.col("b_output_tokens"))
        .alias("length_ratio"),
    )
    drop = [c for c in paired.columns if c.endswith(("_done_s", "_tag", "_scheduled_s"))]
    drop += ["asked_json"]
    return paired.drop(drop).sort("known_s", "scheduled_s", "request_id")
