"""The shadow gates' statistics: the confidence sequence covers, the judgement finds a change soon after it
happens, keeps quiet when nothing changed, and over many simulated A/A periods raises false alarms at most
at alpha, where a per-window check without correction raises them in most periods."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from shadowreplay.analysis.shadow.confidence_sequence import confidence_sequence, first_breach, start_levels
from shadowreplay.analysis.shadow.gate_judgement import judge_gates
from shadowreplay.analysis.shadow.gates_file import GatesFile, GatesFileError, load_gates
from shadowreplay.analysis.shadow.paired_requests import Sides
from shadowreplay.analysis.shadow.windows import grouped_figures, wilson
from tests.support.paths import CONFIGS
from tests.support.shadow_pairs import aa_false_alarms, side_columns, synthetic_pairs

SIDES = Sides("base", "cand")


def gates(*entries: dict, window: str = "300s", alpha: float = 0.05) -> GatesFile:
    return GatesFile.model_validate({"alpha": alpha, "window": window, "gates": list(entries)})


def test_the_confidence_sequence_covers_the_mean_at_every_moment():
    rng = np.random.default_rng(7)
    runs, n, alpha = 400, 2000, 0.05
    x = (rng.random((runs, n)) < 0.1).astype(float)
    missed = 0
    for row in x:
        cs = confidence_sequence(row, alpha)
        missed += bool(np.any((cs.lower > 0.1) | (cs.upper < 0.1)))
    assert missed / runs <= alpha
    cs = confidence_sequence(x[0], alpha)
    assert cs.lower[-1] < 0.1 < cs.upper[-1] and cs.upper[-1] - cs.lower[-1] < 0.07  # narrows with n


def test_the_breach_search_spends_alpha_over_its_starts_and_finds_a_late_change():
    assert start_levels(1000, 0.05).sum() == pytest.approx(0.05, rel=0.01)
    values = np.r_[np.zeros(5000), np.ones(200)]
    times = np.arange(len(values), dtype=float)
    breach = first_breach(values, times, 0.05, 0.05, window_s=100.0)
    assert breach is not None and 5000 <= breach.index <= 5040  # not diluted by the 5,000 before
    assert breach.start == 5000.0
    assert first_breach(np.zeros(5200), times, 0.05, 0.05, window_s=100.0) is None


def test_an_unchanged_candidate_passes_every_gate_and_equal_errors_pass():
    rng = np.random.default_rng(1)
    n = 3000
    base = side_columns("b", n, rng, error_rate=0.02, accuracy=0.9)
    same = {k.replace("b_", "c_", 1): v for k, v in base.items()}  # the very same answers
    report = judge_gates(
        synthetic_pairs(n, 1.0, {"b": base, "c": same}),
        gates(
            {"name": "ttft-sla", "metric": "ttft_p95_ms", "max": 500},
            {"name": "accuracy", "metric": "accuracy", "scorer": "normalized", "max_drop": 0.02},
            {"name": "errors", "metric": "error_rate", "max_increase": 0.01},
        ),
        SIDES,
    )
    assert report.verdict == "pass", report.reasons
    assert [g.status for g in report.gates] == ["pass", "pass", "pass"]
    assert all(g.first_breach_s is None for g in report.gates)
    errors = report.gates[2]
    assert errors.baseline["rate"] == errors.candidate["rate"] == pytest.approx(np.mean(base["b_error"]))


def test_a_candidate_degrading_at_a_known_time_fails_the_right_gates_soon_after():
    rng = np.random.default_rng(2)
    n, change_s = 4000, 2500.0
    scheduled = np.arange(n, dtype=float)
    late = scheduled >= change_s
    base = side_columns("b", n, rng, accuracy=1.0)
    ttft = np.asarray([v if v is not None else 0.0 for v in base["b_ttft_ms"]]) + np.where(late, 400.0, 0.0)
    cand = side_columns("c", n, rng, ttft_ms=ttft, accuracy=1.0)
    wrong = late & (np.arange(n) % 5 == 0)  # 20% wrong answers after the change
    cand["c_correct_0"] = np.asarray(cand["c_correct_0"]) & ~wrong
    report = judge_gates(
        synthetic_pairs(n, 1.0, {"b": base, "c": cand}),
        gates(
            {"name": "ttft-sla", "metric": "ttft_p95_ms", "max": 500},
            {"name": "accuracy", "metric": "accuracy", "scorer": "normalized", "max_drop": 0.02},
            {"name": "errors", "metric": "error_rate", "max_increase": 0.01},
        ),
        SIDES,
    )
    by_name = {g.name: g for g in report.gates}
    assert report.verdict == "fail"
    ttft_gate, accuracy_gate = by_name["ttft-sla"], by_name["accuracy"]
    assert ttft_gate.status == "fail" and accuracy_gate.status == "fail"
    # known_s is 0.5 s after the schedule; the change is seen within a few minutes of requests at 1 req/s
    assert change_s < ttft_gate.first_breach_s < change_s + 60, ttft_gate
    assert change_s < accuracy_gate.first_breach_s < change_s + 600, accuracy_gate
    assert ttft_gate.breach.since_s >= change_s - 300  # found in a stretch starting near the change
    assert by_name["errors"].status == "pass"
    assert all(int(i[1:]) >= change_s for i in accuracy_gate.evidence)  # the wrong answers, after the change
    assert ttft_gate.candidate["p95"] > 500 > ttft_gate.baseline["p95"]
    assert [s.status for s in ttft_gate.windows][:8] == ["pass"] * 8 and ttft_gate.windows[-1].status == "fail"


def test_over_many_aa_periods_false_alarms_stay_within_alpha_where_per_window_checks_do_not():
    """A/A at the gates' own boundaries (the hardest null; tests/support/shadow_pairs.py aa_false_alarms):
    scripts/shadow_false_alarms.py runs the same over more periods for the figures."""
    found = aa_false_alarms(periods=60, windows=24, per_window=60, alpha=0.05, seed=3)
    assert found.ours_rate <= 0.05
    assert found.naive_rate > 0.5


def test_gates_files_are_checked_with_the_file_and_field_named(tmp_path):
    path = tmp_path / "gates.yaml"
    path.write_text("alpha: 0.05\ngates:\n  - {name: ttft, metric: ttft_p95_ms, max_increase: 50}\n")
    with pytest.raises(GatesFileError, match=r"gates.yaml: invalid gates: .*takes max or min"):
        load_gates(path)
    path.write_text("gates:\n  - {name: acc, metric: accuracy, max_drop: 0.02}\n")
    with pytest.raises(GatesFileError, match="needs one"):
        load_gates(path)
    path.write_text("gates:\n  - {name: x, metric: ttft_p95_ms, max: 1}\n  - {name: x, metric: error_rate, max: 0.1}\n")
    with pytest.raises(GatesFileError, match="x given twice"):
        load_gates(path)
    path.write_text("window: soon\ngates:\n  - {name: x, metric: ttft_p95_ms, max: 1}\n")
    with pytest.raises(GatesFileError, match="window"):
        load_gates(path)
    path.write_text("gates:\n  - {name: x, metric: itl_p95_ms, max: 1}\n")
    with pytest.raises(GatesFileError, match="unknown metric 'itl_p95_ms'"):
        load_gates(path)


def test_a_judge_scorer_needs_a_judge_whose_target_is_found_beside_the_gates_file(tmp_path):
    path = tmp_path / "gates.yaml"
    path.write_text("gates:\n  - {name: j, metric: accuracy, scorer: judge, max_drop: 0.02}\n")
    with pytest.raises(GatesFileError, match="give a `judge`"):
        load_gates(path)
    path.write_text(
        "judge: {target: judge.yaml, rubric: 'Grade {question}'}\ngates:\n  - {name: j, metric: error_rate, max: 1}\n"
    )
    with pytest.raises(GatesFileError, match=r"must hold \{answer\}"):
        load_gates(path)
    path.write_text(
        "judge: {target: t/judge.yaml}\ngates:\n  - {name: j, metric: accuracy, scorer: judge, max_drop: 0.1}\n"
    )
    loaded = load_gates(path)
    assert loaded.uses_judge and loaded.judge is not None and loaded.judge.target == tmp_path / "t" / "judge.yaml"
    prompt = loaded.judge.prompt("What is 2 plus 2?", "4", None)
    assert "What is 2 plus 2?" in prompt and "Answer to grade:\n4" in prompt and "{" not in prompt


def test_the_bundled_gates_files_load():
    for path in sorted((CONFIGS / "gates").glob("*.yaml")):
        assert load_gates(path).gates


def test_the_grouped_figures_are_the_pairs_own():
    rng = np.random.default_rng(5)
    n = 900
    pairs = synthetic_pairs(
        n,
        1.0,
        {"b": side_columns("b", n, rng, error_rate=0.1, accuracy=0.8), "c": side_columns("c", n, rng, accuracy=0.8)},
    )
    figures = grouped_figures(pairs, SIDES, window_s=300.0, accuracy=True)
    window = figures.filter(
        (pl.col("grouping") == "window") & (pl.col("group") == "1") & (pl.col("role") == "baseline")
    )
    rows = pairs.filter((pl.col("scheduled_s") >= 300) & (pl.col("scheduled_s") < 600))
    assert window["requests"][0] == rows.height == 300
    assert window["ttft_p95_ms"][0] == pytest.approx(np.percentile(rows["b_ttft_ms"].drop_nulls().to_numpy(), 95))
    assert window["error_rate"][0] == pytest.approx(rows["b_error"].mean())
    right = int(rows["b_correct_0"].sum())
    assert window["accuracy"][0] == pytest.approx(right / 300)
    tags = figures.filter((pl.col("grouping") == "tag") & (pl.col("role") == "candidate"))
    assert sorted(tags["group"].to_list()) == ["chat", "math"] and tags["requests"].sum() == n


def test_the_wilson_interval():
    frame = pl.DataFrame({"k": [8.0, 0.0], "n": [10.0, 20.0]})
    low, high = wilson(pl.col("k"), pl.col("n"))
    found = frame.select(low.alias("low"), high.alias("high"))
    assert found["low"].to_list() == pytest.approx([0.4902, 0.0], abs=1e-4)
    assert found["high"].to_list() == pytest.approx([0.9433, 0.1611], abs=1e-4)
