"""Small traffic logs for tests: a row that carries tests/support/faulty_server.py's script in its
params (`faulty`), a log written in the traffic-log schema, and logs of chosen arrival patterns
(flat, or bursty: its rate swinging around its mean)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
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


def arrivals_log(path: Path, offsets_s: np.ndarray) -> Path:
    """A log of one request per arrival offset (s), each `log_row`'s (5 prompt, 6 completion tokens)."""
    return write_log(path, [log_row(i, float(offset)) for i, offset in enumerate(offsets_s)])


def flat_offsets(requests: int, rate: float = 1.0) -> np.ndarray:
    """Arrivals evenly `1 / rate` s apart."""
    return np.arange(requests) / rate


def bursty_offsets(requests: int) -> np.ndarray:
    """20 s at 2 req/s, then 20 s at 0.5 req/s, and again: a mean of 1.25 req/s with peaks 1.6x the mean."""
    cycle = np.concatenate([np.arange(40) * 0.5, 20.0 + np.arange(10) * 2.0])
    cycles = -(-requests // len(cycle))
    return (cycle[None, :] + 40.0 * np.arange(cycles)[:, None]).ravel()[:requests]
