"""Result rows: one per request per target per attempt (docs/DESIGN.md, results schema_version 3).

Times are seconds from the run's start epoch (`*_s`) or milliseconds after send (`*_ms`).
Columns past DESIGN.md's list, added with the replay engine and documented in the README:
`expected_prompt_tokens` and `expected_completion_tokens` (what the replay asked for, after any
clamp; `expected_completion_tokens` is the exact output length asked for, null where the model was
left to end its answer: `--output-lengths natural`, or no recorded length), `clamped` (a bound,
--max-prompt-tokens or --max-completion-tokens, cut this request's lengths, a body's own max_tokens
included), `raised` (a length was raised above the recorded one: a prompt shorter than the chat
template's floor, a recorded output of 0 tokens; schema_version 2, null in version 1 files),
`replica` (which of the target's endpoints the attempt went to, by index, 0 for a target with one
base_url, null for an attempt never sent; schema_version 3, null in earlier files), `segment` (0
for the run's first start, k for its k-th `--resume`; schema_version 4, null in earlier files,
read as 0), `final` (the last attempt for this request and target), `scheduled_latency_ms` is
derived in analysis, not stored.

Statuses: `cancelled` is the user's Ctrl-C (or a driver that was lost: the workers stop on their
own); `worker_lost` is a request whose worker process died while it was in flight, or whose result
was still in the worker's buffer. Both are RESUMABLE_STATUSES: `replay --resume` replays them (their
rows stay on disk, no longer final), as it replays the pairs without any final row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from shadowreplay.replay.schemas.contract import stamp

SCHEMA_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)  # earlier versions lack the columns added later (readers fill them with nulls)
ADDED_COLUMNS = {"raised": 2, "replica": 3, "segment": 4}  # column -> the schema version that added it
KIND = "results"

DICTIONARY_COLUMNS = ("run_id", "target", "worker", "finish_reason", "status", "tag")
"""Columns of few distinct values that analysis filters and groups on: dictionary-encoded in shards (the
others plain; replay/schemas/shards.py write_parquet)."""
STATUSES = ("ok", "http_error", "timeout", "connection_error", "stream_error", "cancelled", "worker_lost")
RESUMABLE_STATUSES = ("cancelled", "worker_lost")  # final rows that `--resume` replays again

RESULTS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("target", pa.string(), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("attempt", pa.int32(), nullable=False),
        pa.field("final", pa.bool_(), nullable=False),
        pa.field("worker", pa.string()),
        pa.field("replica", pa.int16()),
        pa.field("segment", pa.int16()),
        pa.field("scheduled_s", pa.float64()),
        pa.field("sent_s", pa.float64()),
        pa.field("first_token_s", pa.float64()),
        pa.field("last_token_s", pa.float64()),
        pa.field("done_s", pa.float64()),
        pa.field("lateness_ms", pa.float64()),
        pa.field("ttft_ms", pa.float64()),
        pa.field("e2e_ms", pa.float64()),
        pa.field("token_times_ms", pa.list_(pa.float64())),
        pa.field("prompt_tokens", pa.int32()),
        pa.field("completion_tokens", pa.int32()),
        pa.field("client_tokens", pa.int32()),
        pa.field("expected_prompt_tokens", pa.int32()),
        pa.field("expected_completion_tokens", pa.int32()),
        pa.field("clamped", pa.bool_()),
        pa.field("raised", pa.bool_()),
        pa.field("finish_reason", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("http_status", pa.int32()),
        pa.field("error", pa.string()),
        pa.field("output_text", pa.string()),
        pa.field("tag", pa.string()),
    ],
    metadata=stamp(KIND, SCHEMA_VERSION),
)


@dataclass(slots=True)
class StreamOutcome:
    """What one streamed request did, on the worker's monotonic clock (seconds, time.perf_counter).

    Produced by the streaming client; the runner maps it onto a result row.
    """

    status: str = "ok"
    sent: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    done: float | None = None
    token_times: list[float] = field(default_factory=list)  # absolute monotonic time of each output token
    prompt_tokens: int | None = None  # server usage
    completion_tokens: int | None = None  # server usage
    client_tokens: int | None = None  # tokens counted by the client (chunks, or tokenizer)
    finish_reason: str | None = None
    http_status: int | None = None
    error: str | None = None
    output_text: str | None = None
    retry_after_s: float | None = None  # from a 429/503 Retry-After header, when given
