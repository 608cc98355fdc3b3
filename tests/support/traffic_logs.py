"""Small traffic logs and target files for tests against tests/support/faulty_server.py: a row that
carries the server's script in its params (`faulty`), a log written in the traffic-log schema, and
an OpenAI-kind target file pointing at the scripted server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA

MESSAGES = json.dumps([{"role": "user", "content": "Say something."}])


def log_row(
    i: int, offset_s: float, faulty: dict | None = None, session: str | None = None, max_tokens: int = 6
) -> dict:
    params: dict[str, Any] = {"max_tokens": max_tokens}
    if faulty:
        params["faulty"] = faulty
    return {
        "request_id": f"req-{i:03d}",
        "arrival_time": datetime(2024, 5, 1, tzinfo=UTC) + timedelta(seconds=offset_s),
        "session_id": session,
        "api": "chat",
        "messages": MESSAGES,
        "prompt": None,
        "params": json.dumps(params),
        "prompt_tokens": 5,
        "completion_tokens": max_tokens,
        "prefix_block_ids": None,
        "tag": "faulty" if faulty else "normal",
        "response_text": None,
        "reference": None,
    }


def write_log(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=TRAFFIC_LOG_SCHEMA), path)
    return path
