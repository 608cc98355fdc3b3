"""A self-contained HTML report page: sections of text, tables and plotly figures in one file.

The page opens with no network: plotly's JavaScript is inlined once in the head, each figure is a
div plus a call that draws it, styles are inline, and nothing is fetched. The page builder is
generic: the run report (analysis/report/run_page.py) and a sweep report fill it with their own
sections, and `write` puts the file in place atomically. Text is escaped by jinja2's autoescape.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import plotly
import plotly.io as pio
from plotly.offline import get_plotlyjs

from shadowreplay.analysis.report.charts import Chart
from shadowreplay.analysis.summary.tables import SummaryTable

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "png"}}


@dataclass(frozen=True)
class Figure:
    """A chart (analysis/report/charts.py) with a title and an optional note under it."""

    title: str
    figure: Chart
    note: str | None = None


@dataclass(frozen=True)
class Text:
    """A paragraph; `tone` "warning" draws it as a callout, "alert" as a red one (an incomplete run)."""

    text: str
    tone: str = "plain"


@dataclass(frozen=True)
class Definitions:
    """A collapsed list of term: definition (how each figure was computed)."""

    title: str
    items: Mapping[str, str]


Block = SummaryTable | Figure | Text | Definitions
"""What a section holds; tables are analysis/summary/tables.py's (also what `report` prints)."""


@dataclass
class Section:
    """A titled part of the page (linked from the page's navigation); blocks are drawn in order."""

    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, block: Block) -> Section:
        self.blocks.append(block)
        return self


_TEMPLATE = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True).from_string(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="shadowreplay {{ version }}; plotly.py {{ plotly_version }}">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", "Liberation Sans", sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 16px 24px 48px; color: #1f2933; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #d9dee3; padding-bottom: 4px; margin-top: 2em; }
h3 { font-size: 1em; margin: 1.4em 0 0.4em; }
p.subtitle { color: #52606d; margin-top: 0; }
p.warning { background: #fff8e1; border-left: 4px solid #f0b429; padding: 6px 10px; }
p.alert { background: #fdecea; border-left: 4px solid #c62828; color: #8e1b1b; font-weight: 600;
          padding: 6px 10px; margin: 0.3em 0; }
p.note { color: #52606d; font-size: 0.85em; margin-top: 0.3em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.3em 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e4e7eb; text-align: left; white-space: nowrap; }
th { background: #f5f7fa; }
tr.group td { border-top: 2px solid #9aa5b1; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.table-wrap { overflow-x: auto; }
details { margin-top: 1em; font-size: 0.85em; }
dt { font-weight: 600; margin-top: 0.4em; }
dd { margin-left: 1.2em; color: #3e4c59; }
nav a { margin-right: 1em; font-size: 0.9em; }
</style>
<script type="text/javascript">{{ plotly_js | safe }}</script>
</head>
<body>
<h1>{{ title }}</h1>
{% if subtitle %}<p class="subtitle">{{ subtitle }}</p>{% endif %}
<nav>{% for section in sections %}<a href="#s{{ loop.index }}">{{ section.title }}</a>{% endfor %}</nav>
{% for section in sections %}
{% set s = loop.index %}
<section id="s{{ s }}">
<h2>{{ section.title }}</h2>
{% for block in section.blocks %}
{% if block.kind == "text" %}
<p class="{{ block.tone }}">{{ block.text }}</p>
{% elif block.kind == "table" %}
<h3>{{ block.title }}</h3>
<div class="table-wrap"><table>
<thead><tr>{% for name, css in block.header %}<th class="{{ css }}">{{ name }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in block.rows %}
<tr class="{{ row.css }}">{% for text, css in row.cells %}<td class="{{ css }}">{{ text }}</td>{% endfor %}</tr>
{% endfor %}
</tbody></table></div>
{% if block.note %}<p class="note">{{ block.note }}</p>{% endif %}
{% elif block.kind == "figure" %}
<h3>{{ block.title }}</h3>
<div class="figure">{{ block.html | safe }}</div>
{% if block.note %}<p class="note">{{ block.note }}</p>{% endif %}
{% elif block.kind == "definitions" %}
<details><summary>{{ block.title }}</summary><dl>
{% for term, text in block.entries %}<dt>{{ term }}</dt><dd>{{ text }}</dd>{% endfor %}
</dl></details>
{% endif %}
{% endfor %}
</section>
{% endfor %}
</body>
</html>
"""
)


class ReportPage:
    """A report page: a title, a subtitle and sections, rendered into one self-contained HTML file."""

    def __init__(self, title: str, subtitle: str | None = None, version: str | None = None) -> None:
        self.title = title
        self.subtitle = subtitle
        self.version = version or "?"
        self.sections: list[Section] = []

    def section(self, title: str) -> Section:
        """A new section at the end of the page."""
        section = Section(title)
        self.sections.append(section)
        return section

    def _block_context(self, block: Block, div_id: str) -> dict:
        if isinstance(block, Text):
            return {"kind": "text", "text": block.text, "tone": block.tone}
        if isinstance(block, SummaryTable):
            return {
                "kind": "table",
                "title": block.title,
                "header": [(name, "num" if name in block.numeric else "") for name in block.columns],
                "rows": [
                    {
                        "css": "group" if index in block.group_starts and index > 0 else "",
                        "cells": [
                            (cell, "num" if name in block.numeric else "")
                            for name, cell in zip(block.columns, row, strict=True)
                        ],
                    }
                    for index, row in enumerate(block.rows)
                ],
                "note": block.note,
            }
        if isinstance(block, Definitions):
            return {"kind": "definitions", "title": block.title, "entries": list(block.items.items())}
        html = pio.to_html(
            block.figure.to_plotly(),
            validate=False,  # built as plotly's JSON already; tests have plotly.py check each kind of chart
            full_html=False,
            include_plotlyjs=False,
            div_id=div_id,
            config=PLOTLY_CONFIG,
            default_width="100%",
        )
        return {"kind": "figure", "title": block.title, "html": html, "note": block.note}

    def render(self) -> str:
        """The whole page as one HTML string (plotly.js inlined once)."""
        sections = [
            {
                "title": section.title,
                "blocks": [self._block_context(block, f"fig-{s}-{b}") for b, block in enumerate(section.blocks)],
            }
            for s, section in enumerate(self.sections)
        ]
        return _TEMPLATE.render(
            title=self.title,
            subtitle=self.subtitle,
            sections=sections,
            plotly_js=get_plotlyjs(),
            version=self.version,
            plotly_version=plotly.__version__,
        )

    def write(self, path: str | Path) -> Path:
        """Write the page to `path` atomically (a temporary file beside it, then a rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.render(), encoding="utf-8")
        os.replace(tmp, path)
        return path
