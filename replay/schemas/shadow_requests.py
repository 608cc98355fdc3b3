"""RUN_DIR/requests.parquet: what the traffic log says about each request a shadow replayed, the facts a
shadow comparison judges against (`shadowreplay shadow` writes it before the replay; `gate` reads it).

One row per replayed request: `request_id`, `arrival_s` (seconds after the selected rows' first
arrival: the log's own timeline, before --speed), `arrival_time`, `tag`, `reference` (the expected
answer, for task accuracy), `response_text` (production's answer: the baseline of `--baseline
production`), `params` (the request's other fields as JSON: whether it asked for JSON), and
production's own figures where the log holds them (`completion_tokens`, `prod_ttft_ms`,
`prod_e2e_ms`, `prod_status`). The file outlives the log: the judgement can be recomputed from the run
directory alone. A capture's mirror (replay/capture/mirror.py) writes the same rows as one file a
rotation, `RUN_DIR/requests/<rotation>.parquet`, as its rotations are merged (RunDir.shadow_request_files).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shadowreplay.replay.schemas.contract import stamp
from shadowreplay.replay.schemas.shards import commit_file

SCHEMA_VERSION = 1
KIND = "shadow_requests"
JUDGE_ID_SEPARATOR = "|"
"""A judge request's id is `<request_id>|<target>`: which answer, of which side, it judged (loadgen/shadow_replay.py
writes them, analysis/shadow/judge_verdicts.py reads them)."""
PRODUCTION_SIDE = "production"
"""The side name of production's own answers (the log's response_text) in a judge's request ids."""
SHADOW_REQUESTS_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("arrival_s", pa.float64(), nullable=False),
        pa.field("arrival_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("tag", pa.string()),
        pa.field("reference", pa.string()),
        pa.field("response_text", pa.string()),
        pa.field("params", pa.string()),
        pa.field("completion_tokens", pa.int32()),
        pa.field("prod_ttft_ms", pa.float64()),
        pa.field("prod_e2e_ms", pa.float64()),
        pa.field("prod_status", pa.string()),
    ],
    metadata=stamp(KIND, SCHEMA_VERSION),
)


def shadow_requests(rows: pa.Table, origin_us: int | None = None) -> pa.Table:
    """The shadow requests of the traffic-log rows a replay selected (a log's columns; production's own
    timings where present, null where not). `arrival_s` counts from `origin_us` (microseconds since the
    epoch; default: the rows' first arrival)."""
    micros = rows.column("arrival_time").cast(pa.int64())
    first = origin_us if origin_us is not None else pc.min(micros).as_py() if rows.num_rows else 0
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        "request_id": rows.column("request_id"),
        "arrival_s": pc.divide(pc.cast(pc.subtract(micros, first or 0), pa.float64()), 1e6),
        "arrival_time": rows.column("arrival_time"),
    }
    for field in SHADOW_REQUESTS_SCHEMA:
        if field.name in columns:
            continue
        if field.name in rows.column_names:
            columns[field.name] = pc.cast(rows.column(field.name), field.type)
        else:
            columns[field.name] = pa.nulls(rows.num_rows, field.type)
    return pa.table(columns, schema=SHADOW_REQUESTS_SCHEMA)


def write_shadow_requests(table: pa.Table, path: Path) -> Path:
    """`table` (shadow_requests) to `path`, committed atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    commit_file(tmp, path)
    return path
