"""A deterministic stand-in for the Ray runner in sweep tests: one FIFO server of known capacity.

`FifoServerModel(server_rps, first_token_ms, output_tokens, timeout_s).run_plan` has run_plan's
signature (replay/run/runner.py) and leaves in settings.run_dir the result rows that server would
give: start_i = max(scheduled_i, done_{i-1}); TTFT = wait + first_token_ms; the request's other
output_tokens - 1 tokens fill the rest of its 1 / server_rps s of service, evenly spaced; a request
that would wait longer than timeout_s in the queue times out. So throughput saturates at
server_rps and TTFT grows with the queue, exactly and without noise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyarrow as pa

from shadowreplay.replay.run.runner import RunOutcome, RunSettings
from tests.support.results_factory import result_row, write_results


@dataclass(frozen=True)
class FifoServerModel:
    server_rps: float
    first_token_ms: float
    output_tokens: int
    timeout_s: float

    def run_plan(self, plan: pa.Table, targets, settings: RunSettings, **_: object) -> RunOutcome:
        service_ms = 1000.0 / self.server_rps
        gap_ms = (service_ms - self.first_token_ms) / (self.output_tokens - 1)
        free_at_s = 0.0
        rows = []
        order = sorted(zip(plan.column("scheduled_s").to_pylist(), plan.column("request_id").to_pylist(), strict=True))
        for scheduled_s, request_id in order:
            start_s = max(scheduled_s, free_at_s)
            wait_s = start_s - scheduled_s
            timed_out = wait_s > self.timeout_s
            if not timed_out:
                free_at_s = start_s + service_ms / 1000.0
            rows.append(
                result_row(
                    request_id,
                    target=targets[0].name,
                    scheduled_s=scheduled_s,
                    lateness_ms=0.0,
                    ttft_ms=None if timed_out else wait_s * 1000.0 + self.first_token_ms,
                    gaps_ms=[gap_ms] * (self.output_tokens - 1),
                    status="timeout" if timed_out else "ok",
                    http_status=None if timed_out else 200,
                    run_id=settings.run_dir.name,
                )
            )
        write_results(settings.run_dir, rows)
        by_status = {status: sum(r["status"] == status for r in rows) for status in {r["status"] for r in rows}}
        return RunOutcome(settings.run_dir.name, by_status, [], time.time(), free_at_s, False, 0)
