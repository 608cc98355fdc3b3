"""The 48-hour summary of a shadow: DIR/summary.md and DIR/summary.html, from gates.json's content
(analysis/shadow/gate_judgement.py), the grouped figures (analysis/shadow/windows.py, DIR/windows.parquet),
the chat-template check (RUN_DIR/prompt_format.json) and the cost block (analysis/cost/model.py).

The verdict and the failed gates with their first breach come first: a release manager reads the
decision in the first lines. Then hour by hour (each reporting window) for both targets, the gates'
state window by window, the diurnal view, the per-tag table, the A/A noise floor, the prompt-format
findings and the cost. Both files are built from the same sections (page.py's blocks): the page
draws them with charts, the Markdown as tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from shadowreplay import __version__
from shadowreplay.analysis.report.charts import Panel, Series, Threshold, line_chart
from shadowreplay.analysis.report.page import Block, Definitions, Figure, ReportPage, Section, Text
from shadowreplay.analysis.shadow.gate_judgement import METHOD, GatesReport
from shadowreplay.analysis.shadow.windows import ROLES
from shadowreplay.analysis.summary.tables import NO_VALUE, SummaryTable, money, number
from shadowreplay.replay.schemas.run_dir import write_text_atomically

WINDOW_COLUMNS = (
    ("requests", "requests", 0),
    ("ttft_p50_ms", "TTFT p50 ms", 1),
    ("ttft_p95_ms", "TTFT p95 ms", 1),
    ("ttft_p99_ms", "TTFT p99 ms", 1),
    ("tpot_p95_ms", "TPOT p95 ms", 2),
    ("e2e_p95_ms", "e2e p95 ms", 1),
    ("error_rate", "errors %", -1),
    ("refusal_rate", "refusals %", -1),
)


def _percent(value: float | None, digits: int = 2) -> str:
    return NO_VALUE if value is None else f"{100.0 * value:.{digits}f}%"


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return NO_VALUE
    if digits < 0:
        return _percent(float(value))
    if digits == 0:
        return f"{int(value):,}"
    return number(float(value), digits)


def _figure_text(figures: Mapping[str, float | None] | None) -> str:
    if not figures:
        return NO_VALUE
    parts = []
    for key, value in figures.items():
        if key == "requests":
            continue
        if key == "rate":
            parts.append(_percent(value))
        else:
            parts.append(f"{key} {number(value, 1)}")
    if "requests" in figures and figures["requests"] is not None:
        parts.append(f"n={int(figures['requests']):,}")
    return ", ".join(parts) or NO_VALUE


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return NO_VALUE
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def verdict_section(report: GatesReport) -> Section:
    section = Section("Verdict")
    failed = report.failed
    headline = (
        f"Verdict: {report.verdict.upper()}: candidate {report.candidate} against baseline {report.baseline}, "
        f"{report.requests:,} paired requests, {len(report.gates)} gates at alpha {report.alpha:g} over the whole "
        "shadow period."
    )
    section.add(Text(headline, tone="warning" if report.verdict == "fail" else "plain"))
    for gate in failed:
        assert gate.breach is not None
        log_time = f" (log time {_duration(gate.breach.arrival_s)})" if gate.breach.arrival_s is not None else ""
        section.add(
            Text(
                f"FAILED {gate.name}: {gate.condition}; first breach at {_duration(gate.first_breach_s)} on the "
                f"replay's timeline{log_time}, in the stretch from {_duration(gate.breach.since_s)}; candidate "
                f"{_figure_text(gate.candidate)}, baseline {_figure_text(gate.baseline)}; evidence: "
                f"{', '.join(gate.evidence[:5]) or NO_VALUE}",
                tone="warning",
            )
        )
    for gate in report.gates:
        if gate.status == "inconclusive":
            section.add(
                Text(
                    f"INCONCLUSIVE {gate.name}: {gate.condition} is not shown to hold ({gate.requests:,} requests in "
                    "its population; a longer shadow narrows its confidence sequence)",
                    tone="warning",
                )
            )
    rows = []
    for gate in report.gates:
        interval = NO_VALUE if gate.interval is None else f"[{gate.interval[0]:.4f}, {gate.interval[1]:.4f}]"
        if gate.judged_since_s:
            interval += f" since {_duration(gate.judged_since_s)}"
        rows.append(
            [
                gate.name,
                gate.condition,
                gate.status.upper(),
                _duration(gate.first_breach_s),
                _figure_text(gate.baseline),
                _figure_text(gate.candidate),
                NO_VALUE if gate.estimate is None else f"{gate.estimate:.4f}",
                interval,
                f"{gate.threshold:.4f}",
                f"{gate.requests:,}",
                ", ".join(gate.evidence[:3]) or NO_VALUE,
            ]
        )
    section.add(
        SummaryTable(
            "Gates",
            [
                "gate",
                "condition",
                "status",
                "first breach",
                "baseline",
                "candidate",
                "judged mean",
                "confidence sequence",
                "threshold",
                "requests",
                "evidence",
            ],
            rows,
            numeric=frozenset({"judged mean", "threshold", "requests"}),
            note="judged mean: what each gate's test is over (Definitions below), over the whole period, or for a "
            "failed gate over its breach stretch (since ...); the confidence sequence is that stretch's at its end, at "
            "the level of the test that found the breach (else the gate's alpha).",
        )
    )
    return section


def _grouping_table(
    title: str, figures: pl.DataFrame, label: str, accuracy: bool, note: str | None = None
) -> SummaryTable:
    columns = [label, "side", "target"] + [name for _, name, _ in WINDOW_COLUMNS]
    if accuracy:
        columns += ["accuracy", "95% interval"]
    rows: list[list[str]] = []
    starts: set[int] = set()
    previous = None
    for row in figures.iter_rows(named=True):
        if row["group"] != previous:
            starts.add(len(rows))
            previous = row["group"]
        cells = [str(row["group"]), row["role"], row["target"]]
        cells += [_cell(row.get(key), digits) for key, _, digits in WINDOW_COLUMNS]
        if accuracy:
            cells.append(_percent(row.get("accuracy"), 1))
            low, high = row.get("accuracy_low"), row.get("accuracy_high")
            cells.append(NO_VALUE if low is None or high is None else f"{100 * low:.1f}-{100 * high:.1f}%")
        rows.append(cells)
    numeric = frozenset(name for _, name, _ in WINDOW_COLUMNS) | ({"accuracy"} if accuracy else frozenset())
    return SummaryTable(title, columns, rows, numeric=numeric, group_starts=frozenset(starts), note=note)


def _window_chart(windows: pl.DataFrame, column: str, title: str, unit: str, threshold: float | None) -> Figure:
    series = []
    for role in ROLES.values():
        side = windows.filter(pl.col("role") == role).sort(pl.col("group").cast(pl.Int64))
        if side.is_empty():
            continue
        target = side.get_column("target")[0]
        series.append(
            Series(
                f"{role}: {target}",
                [float(v) for v in side.get_column("group").cast(pl.Int64)],
                side.get_column(column).to_list(),
                mode="lines+markers",
            )
        )
    thresholds = [Threshold(threshold, "gate")] if threshold is not None else []
    return Figure(title, line_chart(Panel(title, unit, series, thresholds), "reporting window"))


def hourly_section(report: GatesReport, figures: pl.DataFrame, accuracy: bool) -> Section:
    windows = figures.filter(pl.col("grouping") == "window")
    section = Section("Window by window")
    section.add(
        Text(
            f"Reporting windows of {_duration(report.window_s)} on the replay's timeline (window k spans "
            f"[k, k + 1) x {report.window_s:g} s after the replay's start); the log's own times of each window's "
            "requests are in windows.parquet (arrival_start_s, arrival_end_s)."
        )
    )
    ttft_gate = next((g for g in report.gates if g.metric.startswith("ttft_p95")), None)
    limit = ttft_gate.limit if ttft_gate is not None else None
    section.add(_window_chart(windows, "ttft_p95_ms", "TTFT p95 per window", "ms", limit))
    if accuracy:
        section.add(_window_chart(windows, "accuracy", "Accuracy per window", "share right", None))
    section.add(_grouping_table("Both targets, window by window", windows, "window", accuracy))
    return section


def gate_state_section(report: GatesReport) -> Section:
    section = Section("Gates window by window")
    windows = sorted({state.window for gate in report.gates for state in gate.windows})
    rows = []
    for window in windows:
        row = [str(window)]
        for gate in report.gates:
            state = next((s for s in gate.windows if s.window == window), None)
            if state is None:
                row.append(NO_VALUE)
            else:
                row.append(f"{state.status} ({state.estimate:.4f}, [{state.lower:.4f}, {state.upper:.4f}])")
        rows.append(row)
    section.add(
        SummaryTable(
            "Each gate's state at the end of each window",
            ["window", *(gate.name for gate in report.gates)],
            rows,
            note="status (judged mean so far, [confidence sequence]): the state a live shadow showed then; a failure "
            "stays failed.",
        )
    )
    return section


def noise_section(report: GatesReport) -> Section:
    section = Section("Noise floor (A/A)")
    if report.aa is None:
        section.add(
            Text("No A/A copy of the baseline ran (shadow --aa): differences are judged without a noise floor.")
        )
        return section
    rows = [
        [
            gate.name,
            gate.condition,
            NO_VALUE if gate.noise_floor is None else f"{gate.noise_floor:.4f}",
            _figure_text(gate.aa),
        ]
        for gate in report.gates
    ]
    section.add(
        SummaryTable(
            f"The baseline against its second copy ({report.aa})",
            ["gate", "condition", "noise floor", "A/A copy's figures"],
            rows,
            note="noise floor: |mean of (A/A copy bad - baseline bad)| per request, added to a relative gate's limit.",
        )
    )
    return section


def prompt_format_section(prompt_format: Mapping[str, Any] | None) -> Section:
    section = Section("Prompt format")
    if not prompt_format:
        section.add(Text("No chat-template check ran (a target without a tokenizer, or a run not made by `shadow`)."))
        return section
    rows = []
    for structure in prompt_format.get("structures", []):
        rows.append(
            [
                structure.get("target", ""),
                " > ".join(structure.get("roles", [])) + (" +tools" if structure.get("tools") else ""),
                f"{structure.get('requests', 0):,}",
                "REJECTED" if structure.get("rejected") else "ok",
                structure.get("error") or "",
                ", ".join(structure.get("example_ids", [])[:3]),
            ]
        )
    section.add(
        SummaryTable(
            "Chat structures rendered through each target's template",
            ["target", "roles", "requests", "template", "error", "examples"],
            rows,
            numeric=frozenset({"requests"}),
        )
    )
    over = prompt_format.get("over_context") or {}
    context = prompt_format.get("context_tokens") or {}
    skipped = prompt_format.get("skipped") or {}
    for target, count in over.items():
        section.add(
            Text(f"{target}: {count:,} requests exceed its context of {context.get(target)} tokens after rendering.")
        )
    for target, why in skipped.items():
        section.add(Text(f"{target}: not checked ({why})."))
    differences = prompt_format.get("token_differences") or {}
    for pair, summary in differences.items():
        section.add(Text(f"Rendered prompt tokens, {pair}: {summary}"))
    return section


def cost_section(cost: Mapping[str, Any] | None) -> Section:
    section = Section("Cost over the period")
    if not cost or cost.get("status") != "computed":
        section.add(Text(f"Cost not computed: {(cost or {}).get('reason', 'no price file')}."))
        return section
    rows = []
    for target, entry in cost["targets"].items():
        monthly = entry.get("monthly") or {}
        rows.append(
            [
                target,
                str(entry.get("price") or entry.get("kind") or NO_VALUE),
                money(entry.get("run_cost_usd")),
                money(entry.get("cost_per_mtok_output_usd")),
                money(monthly.get("cost_usd")),
            ]
        )
    section.add(
        SummaryTable(
            "What each target cost for the shadow's requests",
            ["target", "price", "replay cost", "per 1M output tokens", "monthly at this volume"],
            rows,
            numeric=frozenset({"replay cost", "per 1M output tokens", "monthly at this volume"}),
            note=f"prices: {cost.get('prices_file')}; {cost['monthly_volume']['description']}",
        )
    )
    return section


def summary_sections(
    report: GatesReport,
    figures: pl.DataFrame,
    accuracy: bool,
    prompt_format: Mapping[str, Any] | None,
    cost: Mapping[str, Any] | None,
) -> list[Section]:
    sections = [verdict_section(report), hourly_section(report, figures, accuracy), gate_state_section(report)]
    diurnal = figures.filter(pl.col("grouping") == "hour_of_day")
    if not diurnal.is_empty():
        sections.append(
            Section("Diurnal view").add(
                _grouping_table("By hour of the day (UTC) of production's arrival", diurnal, "hour", accuracy)
            )
        )
    tags = figures.filter(pl.col("grouping") == "tag")
    sections.append(Section("By tag").add(_grouping_table("Both targets by tag", tags, "tag", accuracy)))
    sections.append(noise_section(report))
    sections.append(prompt_format_section(prompt_format))
    sections.append(cost_section(cost))
    judged = {
        gate.name: f"{gate.judged}; threshold {gate.threshold:.4f} at alpha {gate.alpha:.4g}" for gate in report.gates
    }
    sections.append(Section("Definitions").add(Definitions("How each gate is judged", {"method": METHOD, **judged})))
    return sections


def markdown(title: str, sections: Sequence[Section]) -> str:
    """The sections as Markdown: text as paragraphs, tables as pipe tables (charts are the page's only)."""
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += _markdown_block(block)
    return "\n".join(lines).rstrip() + "\n"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_block(block: Block) -> list[str]:
    if isinstance(block, Text):
        return [f"**{_escape(block.text)}**" if block.tone == "warning" else _escape(block.text), ""]
    if isinstance(block, SummaryTable):
        lines = [f"### {block.title}", "", "| " + " | ".join(_escape(c) for c in block.columns) + " |"]
        lines.append("|" + "|".join("---:" if c in block.numeric else "---" for c in block.columns) + "|")
        lines += ["| " + " | ".join(_escape(cell) for cell in row) + " |" for row in block.rows]
        if block.note:
            lines += ["", f"_{_escape(block.note)}_"]
        return [*lines, ""]
    if isinstance(block, Definitions):
        return [f"### {block.title}", "", *(f"- **{term}**: {_escape(text)}" for term, text in block.items.items()), ""]
    return []  # a Figure: drawn in summary.html


def write_summaries(
    html_path: Path,
    md_path: Path,
    report: GatesReport,
    figures: pl.DataFrame,
    accuracy: bool,
    prompt_format: Mapping[str, Any] | None,
    cost: Mapping[str, Any] | None,
) -> None:
    """summary.html and summary.md of one judgement, each written atomically."""
    sections = summary_sections(report, figures, accuracy, prompt_format, cost)
    title = f"Shadow: {report.candidate} against {report.baseline}: {report.verdict.upper()}"
    page = ReportPage(
        title, subtitle=f"{report.requests:,} paired requests; shadowreplay {__version__}", version=__version__
    )
    page.sections.extend(sections)
    page.write(html_path)
    write_text_atomically(md_path, markdown(title, sections))
