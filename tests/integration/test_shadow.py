"""`shadowreplay shadow` and `gate` against scripted servers that answer questions with known references
(tests/support/answer_server.py): a candidate that degrades at a known moment (first token +400 ms and 20%
wrong answers from question 600, 15 s into the replay) fails the latency and accuracy gates (scored by a
numeric scorer and by a scripted judge) with the first
breach shortly after, the error gate passes (no errors on either side), the baseline's A/A copy passes
every gate, `--baseline production` judges against the log's own answers, the chat-template check catches
a template that refuses a system message, and every figure traces to the rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from shadowreplay.cli import main
from tests.support.answer_server import AnswerServerThread, Degradation, JudgeServerThread, question_log
from tests.support.chromium import chromium_dom, plotly_drawing

CHANGE_S = 15.0  # question 600 at 40 questions/s
GEMMA_LIKE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
# 1,200 pairs show an unchanged candidate within 2% at alpha 0.05 / 3 (confidence_sequence.py LAMBDA_CAP)
GATES = """alpha: 0.05
window: 2s
judge: {target: judge.yaml, rate: 400}
gates:
  - {name: ttft-sla, metric: ttft_p95_ms, max: 300}
  - {name: accuracy, metric: accuracy, scorer: {kind: numeric}, max_drop: 0.02}
  - {name: errors, metric: error_rate, max_increase: 0.02}
  - {name: judged, metric: accuracy, scorer: judge, max_drop: 0.02}
"""


def _target(path: Path, name: str, base_url: str, tokenizer: Path) -> Path:
    path.write_text(
        "\n".join(
            [
                f"name: {name}",
                "kind: openai",
                f"base_url: {base_url}",
                "model: scripted",
                f"tokenizer: {tokenizer}",
                "timeouts: {connect_s: 5, first_token_s: 5, total_s: 10}",
            ]
        )
        + "\n"
    )
    return path


def _with_system_messages(log: Path, every: int) -> None:
    """Every `every`-th question gets a system message first (the Gemma-like template refuses those)."""
    table = pq.read_table(log)
    rows = table.to_pylist()
    for i, row in enumerate(rows):
        if i % every == 0:
            messages = json.loads(row["messages"])
            row["messages"] = json.dumps([{"role": "system", "content": "Answer briefly."}, *messages])
    pq.write_table(table.from_pylist(rows, schema=table.schema), log)


def test_a_degrading_candidate_fails_the_right_gates_soon_after_the_change(tmp_path, tiny_model_dir, capsys):
    log = question_log(tmp_path / "questions.parquet", questions=1200, rate=40.0)
    _with_system_messages(log, every=10)
    gemma_like = tmp_path / "gemma-like-tokenizer"
    shutil.copytree(tiny_model_dir, gemma_like)
    config = json.loads((gemma_like / "tokenizer_config.json").read_text())
    config["chat_template"] = GEMMA_LIKE
    (gemma_like / "tokenizer_config.json").write_text(json.dumps(config))
    gates = tmp_path / "gates.yaml"
    gates.write_text(GATES)
    run_dir = tmp_path / "shadow"
    degraded = Degradation(from_question=600, extra_ttft_ms=400.0, wrong_every=5)
    with (
        AnswerServerThread() as base_server,
        AnswerServerThread(degradation=degraded) as cand_server,
        JudgeServerThread() as judge_server,
    ):
        _target(tmp_path / "judge.yaml", "judge", judge_server.base_url, tiny_model_dir)
        baseline = _target(tmp_path / "base.yaml", "base", base_server.base_url, tiny_model_dir)
        candidate = _target(tmp_path / "cand.yaml", "cand", cand_server.base_url, gemma_like)
        argv = ["shadow", str(log), "--baseline", str(baseline), "--candidate", str(candidate), "--aa"]
        argv += ["--gates", str(gates), "--prices", "none", "-o", str(run_dir)]
        code = main(argv)
    printed = capsys.readouterr().out
    assert code == 3, printed  # the verdict is fail
    report = json.loads((run_dir / "gates.json").read_text())
    assert report["verdict"] == "fail" and report["requests"] == 1200
    gates_by_name = {gate["name"]: gate for gate in report["gates"]}
    ttft, accuracy, errors = gates_by_name["ttft-sla"], gates_by_name["accuracy"], gates_by_name["errors"]
    assert ttft["status"] == "fail" and CHANGE_S < ttft["first_breach_s"] < CHANGE_S + 3, ttft
    assert accuracy["status"] == "fail" and CHANGE_S < accuracy["first_breach_s"] < CHANGE_S + 10, accuracy
    assert errors["status"] == "pass" and errors["first_breach_s"] is None, errors
    # judged while it ran (every 5 s at the least): the rows so far, at most every request
    live = json.loads((run_dir / "live" / "gates.json").read_text())
    assert 0 < live["requests"] <= 1200 and "judged" not in {g["name"] for g in live["gates"]}  # no judge yet
    assert "while it ran" in printed
    # the judge graded every answer of every side (its own run: rows, manifest) and agrees with the references
    judged = gates_by_name["judged"]
    assert judge_server.server.graded == 3 * 1200
    assert len([r for r in pq.read_table(run_dir / "judge" / "results").to_pylist() if r["final"]]) == 3600
    assert judged["status"] == "fail" and CHANGE_S < judged["first_breach_s"] < CHANGE_S + 10, judged
    assert judged["candidate"]["rate"] == accuracy["candidate"]["rate"] and judged["baseline"]["rate"] == 1.0
    assert all(int(i.removeprefix("q-")) >= 600 and int(i.removeprefix("q-")) % 5 == 0 for i in accuracy["evidence"])
    assert errors["noise_floor"] == 0.0 and accuracy["noise_floor"] == 0.0  # the A/A copy answered alike

    # figures trace to rows: the candidate's TTFT p95 and accuracy recomputed from the result shards
    rows = [r for r in pq.read_table(run_dir / "results").to_pylist() if r["final"]]
    cand_ttft = [r["ttft_ms"] for r in rows if r["target"] == "cand" and r["status"] == "ok"]
    assert ttft["candidate"]["p95"] == np.percentile(cand_ttft, 95)
    right = [
        r["output_text"].rstrip(".").split()[-1] == str(_reference(r["request_id"]))
        for r in rows
        if r["target"] == "cand"
    ]
    assert (
        accuracy["candidate"]["rate"] == sum(right) / len(right) == 1 - 120 / 1200
    )  # 600 late questions, 1 in 5 wrong

    # the chat-template check: the candidate's template refuses the 120 requests with a system message
    assert report["prompt_format"]["targets"]["cand"]["rejected_requests"] == 120
    assert report["prompt_format"]["targets"]["base"]["rejected_requests"] == 0
    summary = (run_dir / "summary.md").read_text()
    assert summary.startswith("# Shadow: cand against base: FAIL")
    assert "FAILED ttft-sla" in summary and "System role not supported" in summary
    dom, _ = chromium_dom(run_dir / "summary.html", tmp_path / "profile")
    drawn = plotly_drawing(dom)
    assert len(drawn.figure_classes) == 2 and all("js-plotly-plot" in c for c in drawn.figure_classes.values())
    assert "Verdict: FAIL" in dom

    # the A/A copy is an unchanged candidate: every gate passes, from the run directory alone
    aa_dir = tmp_path / "aa"
    argv = ["gate", str(run_dir), "--baseline", "base", "--candidate", "base-aa", "--gates", str(gates)]
    assert main([*argv, "--prices", "none", "-o", str(aa_dir)]) == 0
    aa_report = json.loads((aa_dir / "gates.json").read_text())
    assert aa_report["verdict"] == "pass" and all(g["status"] == "pass" for g in aa_report["gates"]), aa_report

    # --baseline production: the log's own answers (all right) are the baseline
    prod_dir = tmp_path / "production"
    argv = ["gate", str(run_dir), "--baseline", "production", "--candidate", "cand", "--gates", str(gates)]
    assert main([*argv, "--prices", "none", "-o", str(prod_dir), "--json"]) == 3
    prod = {g["name"]: g for g in json.loads((prod_dir / "gates.json").read_text())["gates"]}
    assert prod["accuracy"]["baseline"]["rate"] == 1.0 and prod["accuracy"]["status"] == "fail"


def _reference(request_id: str) -> int:
    i = int(request_id.removeprefix("q-"))
    return i % 50 + 1 + i % 7 + 2
