"""The live progress display of a replay: a rich panel on a terminal, a plain line every few
seconds otherwise (CI logs, files)."""

from __future__ import annotations

import sys
import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from shadowreplay.replay.run.running_sketch import LATENESS_WARN_MS, ProgressSnapshot


def _ms(value: float | None) -> str:
    return f"{value:.0f} ms" if value is not None else "-"


def behind_line(snapshot: ProgressSnapshot) -> str | None:
    """The warning while the client sends late, else None."""
    if not snapshot.behind_schedule:
        return None
    return (
        f"WARNING: the client is behind its schedule (send lateness p99 {snapshot.lateness_p99_ms:.0f} ms > "
        f"{LATENESS_WARN_MS:.0f} ms): the load is not offered as recorded"
    )


def _line(snapshot: ProgressSnapshot) -> str:
    errors = ", ".join(f"{s} {n}" for s, n in sorted(snapshot.by_status.items()) if s != "ok") or "none"
    line = (
        f"sent {snapshot.sent}/{snapshot.scheduled}  done {snapshot.done}  in flight {snapshot.in_flight}  "
        f"{snapshot.recent_done_per_s:.1f} req/s  TTFT p50 {_ms(snapshot.ttft_p50_ms)}  "
        f"lateness p99 {_ms(snapshot.lateness_p99_ms)}  errors: {errors}"
    )
    behind = behind_line(snapshot)
    return f"{line}\n{behind}" if behind else line


class ProgressDisplay:
    """Call `update(snapshot)` as often as you like; use as a context manager.

    The panel is redrawn on each update, never on a timer of its own: the runner asks for progress
    about once a second, and a redraw costs milliseconds of CPU on the host the workers may share
    (rich's own refresh thread would redraw the unchanged panel 4 times a second)."""

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
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
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
            self._live.update(self._table(snapshot), refresh=True)
        elif time.monotonic() - self._last_plain >= self.plain_every_s:
            self._last_plain = time.monotonic()
            self.console.print(f"{self.title}: {_line(snapshot)}", highlight=False, soft_wrap=True)

    def _table(self, s: ProgressSnapshot) -> Table | Group:
        table = Table(title=self.title, show_header=True, header_style="bold")
        for column in ("sent", "done", "in flight", "req/s (5 s)", "TTFT p50", "lateness p99", "errors"):
            table.add_column(column, justify="right")
        errors = ", ".join(f"{k} {v}" for k, v in sorted(s.by_status.items()) if k != "ok") or "0"
        table.add_row(
            f"{s.sent}/{s.scheduled}",
            str(s.done),
            str(s.in_flight),
            f"{s.recent_done_per_s:.1f}",
            _ms(s.ttft_p50_ms),
            _ms(s.lateness_p99_ms),
            errors,
        )
        behind = behind_line(s)
        return Group(table, Text(behind, style="bold red")) if behind else table
