"""The live progress display of a replay: a rich panel on a terminal, a plain line every few
seconds otherwise (CI logs, files)."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from shadowreplay.replay.run.running_sketch import ProgressSnapshot


def _line(snapshot: ProgressSnapshot) -> str:
    ttft = f"{snapshot.ttft_p50_ms:.0f} ms" if snapshot.ttft_p50_ms is not None else "-"
    errors = ", ".join(f"{s} {n}" for s, n in sorted(snapshot.by_status.items()) if s != "ok") or "none"
    return (
        f"sent {snapshot.sent}/{snapshot.scheduled}  done {snapshot.done}  in flight {snapshot.in_flight}  "
        f"{snapshot.recent_done_per_s:.1f} req/s  TTFT p50 {ttft}  errors: {errors}"
    )


class ProgressDisplay:
    """Call `update(snapshot)` as often as you like; use as a context manager."""

    def __init__(self, title: str, console: Console | None = None, plain_every_s: float = 10.0):
        self.title = title
        self.console = console or Console(stderr=True)
        self.interactive = self.console.is_terminal and sys.stderr.isatty()
        self.plain_every_s = plain_every_s
        self._live: Live | None = None
        self._last_plain = 0.0
        self.last: ProgressSnapshot | None = None

    def __enter__(self) -> ProgressDisplay:
        if self.interactive:
            self._live = Live(console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
        elif self.last is not None:
            self.console.print(f"{self.title}: {_line(self.last)}", highlight=False, soft_wrap=True)

    def update(self, snapshot: ProgressSnapshot) -> None:
        self.last = snapshot
        if self._live is not None:
            self._live.update(self._table(snapshot))
        elif time.monotonic() - self._last_plain >= self.plain_every_s:
            self._last_plain = time.monotonic()
            self.console.print(f"{self.title}: {_line(snapshot)}", highlight=False, soft_wrap=True)

    def _table(self, s: ProgressSnapshot) -> Table:
        table = Table(title=self.title, show_header=True, header_style="bold")
        for column in ("sent", "done", "in flight", "req/s (5 s)", "TTFT p50", "errors"):
            table.add_column(column, justify="right")
        errors = ", ".join(f"{k} {v}" for k, v in sorted(s.by_status.items()) if k != "ok") or "0"
        ttft = f"{s.ttft_p50_ms:.0f} ms" if s.ttft_p50_ms is not None else "-"
        table.add_row(
            f"{s.sent}/{s.scheduled}", str(s.done), str(s.in_flight), f"{s.recent_done_per_s:.1f}", ttft, errors
        )
        return table
