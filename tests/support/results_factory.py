"""Builds result rows with known timings and writes them as valid results shards in a run directory.

A row is described by what a test wants to control (scheduled time, lateness, TTFT, the gaps
between tokens, token counts, status); every other timing column is derived from those the way the
runner fills it, so metrics computed from the Parquet rows can be checked against the inputs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import accumulate
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shadowreplay.replay.schemas.results import RESULTS_SCHEMA

RUN_ID = "run-factory"
DONE_AFTER_LAST_TOKEN_MS = 0.5


def result_row(
    request_id: str,
    *,
    target: str = "target-a",
    scheduled_s: float = 0.0,
    lateness_ms: float = 1.0,
    ttft_ms: float | None = 20.0,
    gaps_ms: Sequence[float] = (5.0, 5.0),
    completion_tokens: int | None = -1,
    client_tokens: int | None = -1,
    status: str = "ok",
    attempt: int = 1,
    final: bool = True,
    tag: str | None = None,
    http_status: int | None = 200,
    run_id: str = RUN_ID,
) -> dict:
    """One result row. Token times are ttft_ms followed by cumulative gaps; `-1` token counts mean
    "the number of token times"; `ttft_ms=None` makes a row with no tokens (e.g. an error)."""
    sent_s = scheduled_s + lateness_ms / 1000.0
    token_times = [] if ttft_ms is None else list(accumulate([ttft_ms, *gaps_ms]))
    n_tokens = len(token_times)
    last_ms = token_times[-1] if token_times else None
    done_ms = (last_ms if last_ms is not None else 30.0) + DONE_AFTER_LAST_TOKEN_MS
    return {
        "run_id": run_id,
        "target": target,
        "request_id": request_id,
        "attempt": attempt,
        "final": final,
        "worker": "w0",
        "scheduled_s": scheduled_s,
        "sent_s": sent_s,
        "first_token_s": None if ttft_ms is None else sent_s + ttft_ms / 1000.0,
        "last_token_s": None if last_ms is None else sent_s + last_ms / 1000.0,
        "done_s": sent_s + done_ms / 1000.0,
        "lateness_ms": lateness_ms,
        "ttft_ms": ttft_ms,
        "e2e_ms": last_ms,
        "token_times_ms": token_times,
        "prompt_tokens": 16,
        "completion_tokens": n_tokens if completion_tokens == -1 else completion_tokens,
        "client_tokens": n_tokens if client_tokens == -1 else client_tokens,
        "expected_prompt_tokens": 16,
        "expected_completion_tokens": n_tokens,
        "clamped": False,
        "finish_reason": "length" if status == "ok" else None,
        "status": status,
        "http_status": http_status,
        "error": None if status == "ok" else f"{status} for the test",
        "output_text": None,
        "tag": tag,
    }


def write_results(
    run_dir: Path,
    rows: Sequence[dict],
    shards: int = 2,
    manifest: dict | None = None,
    schema: pa.Schema = RESULTS_SCHEMA,
) -> list[Path]:
    """Write `rows` round-robin into `shards` Parquet files under RUN_DIR/results (and a manifest)."""
    results_dir = Path(run_dir) / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(shards):
        part = list(rows[shard::shards])
        if not part:
            continue
        path = results_dir / f"part-w{shard}-00000.parquet"
        pq.write_table(pa.Table.from_pylist(part, schema=schema), path)
        paths.append(path)
    if manifest is not None:
        (Path(run_dir) / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return paths
