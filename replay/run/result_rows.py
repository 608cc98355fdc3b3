"""How one attempt's StreamOutcome becomes a result row (replay/schemas/results.py, RESULTS_SCHEMA).

One mapping for every producer of result rows (the Ray replay worker, the Locust user), so a
Locust run directory and a replay run directory mean the same thing column by column.

Clock: a StreamOutcome holds perf_counter seconds of the process that sent the request; `to_run_s`
maps one of them onto the run's timeline (seconds since the run's start epoch), e.g.
`shadowreplay.replay.clock.ClockMapping.to_run_s`. `token_times_ms` are milliseconds after send.
"""

from __future__ import annotations

from collections.abc import Callable

from shadowreplay.replay.schemas.results import StreamOutcome

RunClock = Callable[[float | None], float | None]
"""perf_counter seconds (or None) -> seconds on the run's timeline (or None)."""


def result_row(
    *,
    run_id: str,
    target: str,
    worker: str,
    row: dict,
    outcome: StreamOutcome,
    attempt: int,
    final: bool,
    to_run_s: RunClock,
    keep_output_text: bool = False,
    replica: int | None = None,
    segment: int = 0,
) -> dict:
    """The result row (a dict keyed by RESULTS_SCHEMA names) of one attempt of one request.

    `row` is the request as sent (a plan row with the lengths the request really asked for, as
    `shadowreplay.replay.requests.builder.BuiltRequest.recorded_row` gives): `request_id`, `scheduled_s`,
    `expected_prompt_tokens`, `expected_completion_tokens`, `clamped`, `raised` and `tag` are read from it.
    `replica`: the index, in the target's endpoints, of the replica the attempt went to (None: none).
    `segment`: the run's start that sent it (0, or the k-th --resume).
    """
    sent_s = to_run_s(outcome.sent)
    first_s = to_run_s(outcome.first_token)
    last_s = to_run_s(outcome.last_token)
    token_times_ms = [(t - outcome.sent) * 1000.0 for t in outcome.token_times] if outcome.sent is not None else []
    scheduled_s = row["scheduled_s"]
    return {
        "run_id": run_id,
        "target": target,
        "request_id": row["request_id"],
        "attempt": attempt,
        "final": final,
        "worker": worker,
        "replica": replica,
        "segment": segment,
        "scheduled_s": scheduled_s,
        "sent_s": sent_s,
        "first_token_s": first_s,
        "last_token_s": last_s,
        "done_s": to_run_s(outcome.done),
        "lateness_ms": (sent_s - scheduled_s) * 1000.0 if sent_s is not None and scheduled_s is not None else None,
        "ttft_ms": (first_s - sent_s) * 1000.0 if first_s is not None and sent_s is not None else None,
        "e2e_ms": (last_s - sent_s) * 1000.0 if last_s is not None and sent_s is not None else None,
        "token_times_ms": token_times_ms,
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "client_tokens": outcome.client_tokens,
        "expected_prompt_tokens": row["expected_prompt_tokens"],
        "expected_completion_tokens": row["expected_completion_tokens"],
        "clamped": row["clamped"],
        "raised": row.get("raised"),
        "finish_reason": outcome.finish_reason,
        "status": outcome.status,
        "http_status": outcome.http_status,
        "error": outcome.error,
        "output_text": outcome.output_text if keep_output_text else None,
        "tag": row["tag"],
    }
