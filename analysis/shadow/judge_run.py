"""A shadow's judgement from a run directory alone (no Ray, no network): the paired measures, the gates,
the grouped figures and the summaries, written to a gates directory (replay/schemas/run_dir.py GatesDir).
What `shadowreplay gate` runs, and `shadowreplay shadow` after its replay.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from shadowreplay.analysis.cost.model import cost_summary
from shadowreplay.analysis.cost.prices import PriceBook
from shadowreplay.analysis.data.run_data import load_run
from shadowreplay.analysis.metrics.table import steady_window
from shadowreplay.analysis.shadow.gate_judgement import GatesReport, judge_gates
from shadowreplay.analysis.shadow.gates_file import GatesFile
from shadowreplay.analysis.shadow.judge_verdicts import judge_verdicts
from shadowreplay.analysis.shadow.paired_requests import (
    PRODUCTION,
    ShadowDataError,
    Sides,
    paired_requests,
    read_shadow_requests,
)
from shadowreplay.analysis.shadow.shadow_summary import write_summaries
from shadowreplay.analysis.shadow.windows import grouped_figures
from shadowreplay.replay.schemas.run_dir import GatesDir, RunDir, write_text_atomically

PROMPT_FORMAT_NAME = "prompt_format.json"


@dataclass(frozen=True)
class Judgement:
    report: GatesReport
    pairs: pl.DataFrame
    figures: pl.DataFrame
    out: GatesDir


def read_prompt_format(run_dir: RunDir) -> dict[str, Any] | None:
    """RUN_DIR/prompt_format.json (the chat-template check `shadow` ran), or None."""
    path = run_dir.prompt_format_dir / PROMPT_FORMAT_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def prompt_format_counts(found: dict[str, Any] | None) -> dict[str, Any] | None:
    """gates.json's `prompt_format`: per target, the requests its template rejected and those over its context."""
    if found is None:
        return None
    targets: dict[str, dict[str, int]] = {}
    for structure in found.get("structures", []):
        entry = targets.setdefault(structure["target"], {"rejected_requests": 0, "over_context": 0})
        if structure.get("rejected"):
            entry["rejected_requests"] += int(structure.get("requests", 0))
    for target, count in (found.get("over_context") or {}).items():
        targets.setdefault(target, {"rejected_requests": 0, "over_context": 0})["over_context"] = int(count)
    return {"targets": targets, "checked_requests": found.get("checked_requests"), "skipped": found.get("skipped", {})}


def _write_atomically(frame: pl.DataFrame, path: Path) -> None:
    """`frame` as Parquet at `path` through a hidden temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    frame.write_parquet(tmp)
    os.replace(tmp, path)


def judge_run(run_dir: Path, sides: Sides, gates: GatesFile, out: Path, prices: PriceBook | None) -> Judgement:
    """Judge `sides` of the run in `run_dir` by `gates`; gates.json, pairs.parquet, windows.parquet, summary.md and
    summary.html written to `out` (created)."""
    run = RunDir(run_dir)
    data = load_run(run_dir, include_output_text=True)
    requests = read_shadow_requests(run.shadow_request_files())
    verdicts = None
    judge_cost = None
    if gates.uses_judge:
        assert gates.judge is not None
        if not run.judge_dir.has_results():
            raise ShadowDataError(
                f"{run.judge_dir.path}: the gates score by judge, and this run has no judge run (`shadowreplay "
                "shadow` runs the gates file's judge after its replay)"
            )
        verdicts = judge_verdicts(run.judge_dir.path, gates.judge.pass_pattern)
        judged = load_run(run.judge_dir.path)
        judge_cost = cost_summary(
            judged.final_scan, steady_window(judged.final_scan), prices, judged.target_configs, {}
        )
    pairs = paired_requests(data, sides, gates.scorers, gates.refusal_phrases, requests, verdicts)
    prompt_format = read_prompt_format(run)
    report = judge_gates(pairs, gates, sides, prompt_format_counts(prompt_format))
    accuracy = bool(gates.scorers)
    figures = grouped_figures(pairs, sides, gates.window_s, accuracy)
    replayed = [name for name in sides.named.values() if name != PRODUCTION]
    final = data.final_scan.filter(pl.col("target").is_in(replayed))
    cost = cost_summary(final, steady_window(final), prices, data.target_configs, {})
    if judge_cost is not None and judge_cost.get("status") == "computed" and cost.get("status") == "computed":
        cost["targets"].update({f"{name} (judge)": entry for name, entry in judge_cost["targets"].items()})
    directory = GatesDir(out)
    directory.path.mkdir(parents=True, exist_ok=True)
    _write_atomically(pairs, directory.pairs_path)
    _write_atomically(figures, directory.windows_path)
    write_text_atomically(directory.gates_path, report.model_dump_json(indent=2))
    write_summaries(
        directory.summary_html_path, directory.summary_md_path, report, figures, accuracy, prompt_format, cost
    )
    return Judgement(report, pairs, figures, directory)
