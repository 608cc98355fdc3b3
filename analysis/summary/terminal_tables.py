"""The summary's tables (analysis/summary/tables.py) as rich tables that fit a terminal's width
without cutting a cell: a target name (or GPU) is never shortened with an ellipsis, nor is a number.

The first layout that fits `width` wins:
1. boxed, every column at its natural width (what a wide terminal shows);
2. the same without the outer border and with one space between columns (`COMPACT`; groups keep a rule);
3. compact, columns narrowed where they must be: a numeric column stays as wide as its widest
   number; the room goes first to the target column (its names whole), then to the text columns
   (tags, statuses, SLO names, price entries) up to `TEXT_MIN_WIDTH`, then to whichever column
   needs least to be shown whole. Narrowed text wraps inside its cell (folded: every character kept),
   headers wrap at their spaces. Target names fold only where even that cannot fit them.
A table whose numbers alone do not fit (a 40-column terminal) is drawn at its narrowest.
"""

from __future__ import annotations

from collections.abc import Callable

from rich import box
from rich.console import Console
from rich.table import Table

from shadowreplay.analysis.summary.tables import SummaryTable

WHOLE_COLUMNS = frozenset({"Target", "GPU"})
"""Columns naming what a row is about: shown whole while any layout allows it."""
TEXT_MIN_WIDTH = 8
"""A text column gets this much (or its longest header word, or its widest cell if narrower) before
any column is widened further."""
TEXT_FLOOR_WIDTH = 4
"""Below this a text column is never folded."""

COMPACT = box.Box(
    "    \n"  # top
    "    \n"  # header row
    " ━━ \n"  # under the header
    "    \n"  # between rows
    " ── \n"  # between groups (sections)
    "    \n"
    "    \n"
    "    \n"  # bottom
)


def _empty_table(table: SummaryTable, compact: bool) -> Table:
    if compact:
        return Table(
            title=table.title,
            title_justify="left",
            box=COMPACT,
            show_edge=False,
            pad_edge=False,
            collapse_padding=True,
        )
    return Table(title=table.title, title_justify="left")


def _chrome(table: SummaryTable, compact: bool) -> int:
    """Columns of the terminal a layout spends on borders and padding."""
    probe = _empty_table(table, compact)
    for _ in table.columns:
        probe.add_column(width=1)
    return Console(width=10_000).measure(probe).maximum - len(table.columns)


def _longest_word(text: str) -> int:
    return max((len(word) for word in text.split()), default=0)


def _fill(widths: list[int], goals: list[int], columns: list[int], room: int) -> int:
    """Widen `columns` towards `goals`, those needing least first; returns the room left."""
    for i in sorted(columns, key=lambda i: goals[i] - widths[i]):
        extra = max(0, min(room, goals[i] - widths[i]))
        widths[i] += extra
        room -= extra
    return room


def narrowed_widths(table: SummaryTable, room: int) -> list[int]:
    """Column widths (content, no padding) for layout 3 within `room` columns (module docstring)."""
    natural, floor, comfort = [], [], []
    whole, text = [], []
    for index, column in enumerate(table.columns):
        cells = [row[index] for row in table.rows]
        widest = max((len(cell) for cell in cells), default=0)
        natural.append(max(len(column), widest, 1))
        header = _longest_word(column)
        if column in table.numeric:
            floor.append(max(widest, header, 1))
            comfort.append(floor[-1])
        elif column in WHOLE_COLUMNS:
            whole.append(index)
            floor.append(min(natural[-1], TEXT_MIN_WIDTH))
            comfort.append(natural[-1])
        else:
            text.append(index)
            floor.append(min(natural[-1], TEXT_FLOOR_WIDTH))
            comfort.append(min(natural[-1], max(min(widest, TEXT_MIN_WIDTH), header)))
    widths = list(floor)
    room -= sum(floor)
    room = _fill(widths, comfort, whole, room)
    room = _fill(widths, comfort, text, room)
    _fill(widths, natural, list(range(len(widths))), room)
    return widths


def fit(table: SummaryTable, width: int) -> tuple[bool, list[int] | None]:
    """(compact?, column widths) of the first layout that fits `width`; None: natural widths."""
    natural = sum(
        max(len(column), *(len(row[index]) for row in table.rows), 1) for index, column in enumerate(table.columns)
    )
    for compact in (False, True):
        if natural + _chrome(table, compact) <= width:
            return compact, None
    return True, narrowed_widths(table, width - _chrome(table, True))


def terminal_table(table: SummaryTable, width: int, cell: Callable[[str, str], str] | None = None) -> Table:
    """`table` as a rich Table at most `width` columns wide where it can be (module docstring):
    numeric columns right-aligned, a rule between groups; `cell(column, text)` may add markup
    (e.g. colour a verdict) without changing the text's width."""
    compact, widths = fit(table, width)
    rendered = _empty_table(table, compact)
    for index, column in enumerate(table.columns):
        rendered.add_column(
            column,
            justify="right" if column in table.numeric else "left",
            width=None if widths is None else widths[index],
            overflow="fold",
        )
    for index, row in enumerate(table.rows):
        if index in table.group_starts and index > 0:
            rendered.add_section()
        cells = zip(table.columns, row, strict=True)
        rendered.add_row(*(cell(column, text) if cell else text for column, text in cells))
    return rendered
