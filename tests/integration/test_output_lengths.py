"""Output lengths end to end: `shadowreplay replay` on Ray against the scripted server
(tests/support/faulty_server.py sends exactly the body's max_tokens tokens), so each row's served
length shows what the request asked for; the manifest's counts equal the result rows' flags."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from shadowreplay.analysis.data.run_data import load_run
from shadowreplay.analysis.summary.run_summary import summarize
from tests.support.faulty_server import FaultyServerThread
from tests.support.target_files import write_target
from tests.support.traffic_logs import log_row, write_log


@pytest.fixture(scope="module")
def faulty_server():
    with FaultyServerThread() as server:
        yield server


def test_recorded_lengths_clamps_and_raises_reach_rows_and_manifest(tmp_path, faulty_server, tiny_model_dir):
    rows = [log_row(i, 0.02 * i) for i in range(4)]
    rows[0].update(params=json.dumps({"max_tokens": 100}), completion_tokens=3)  # asked for 3, not 100
    rows[1].update(params=json.dumps({"max_tokens": 100}), completion_tokens=8)  # 8 cut to 5 (the plan)
    rows[2].update(messages=None, params=None, prompt_tokens=1, completion_tokens=2)  # raised (a worker)
    rows[3].update(params=json.dumps({"max_tokens": 100}), completion_tokens=None)  # 100 cut to 5 (a worker)
    log = write_log(tmp_path / "log.parquet", rows)
    target = write_target(tmp_path / "t.yaml", faulty_server.base_url, tokenizer=str(tiny_model_dir))
    run_dir = tmp_path / "run"
    from shadowreplay.cli import main

    argv = ["replay", str(log), "-t", str(target), "-o", str(run_dir), "--workers", "1"]
    assert main([*argv, "--max-completion-tokens", "5"]) == 0

    finals = {r["request_id"]: r for r in pq.read_table(run_dir / "results").to_pylist() if r["final"]}
    assert all(r["status"] == "ok" for r in finals.values()), finals
    ids = sorted(finals)
    assert [finals[i]["completion_tokens"] for i in ids] == [3, 5, 2, 5]
    assert [finals[i]["expected_completion_tokens"] for i in ids] == [3, 5, 2, None]
    assert [finals[i]["clamped"] for i in ids] == [False, True, False, True]
    assert [finals[i]["raised"] for i in ids] == [False, False, True, False]

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["selection"]["output_lengths"] == "recorded"
    assert manifest["counts"]["clamped_requests"] == sum(r["clamped"] for r in finals.values()) == 2
    assert manifest["counts"]["raised_requests"] == sum(r["raised"] for r in finals.values()) == 1

    lengths = summarize(load_run(run_dir)).targets["faulty"].all.output_lengths
    assert (lengths.clamped, lengths.raised, lengths.exact_checked, lengths.short) == (2, 1, 3, 0)


def test_chat_rows_get_their_recorded_length_from_vllm(tmp_path, vllm_server):
    """Real messages asked for their recorded length on vLLM (ignore_eos + min_tokens): 17 tokens
    although the body's own max_tokens said 3; in `natural`, the body's 3 stands."""
    from shadowreplay.replay.run.replay_session import ReplayRequest, replay_log
    from tests.support.target_files import vllm_openai_target

    rows = [log_row(i, 0.05 * i, max_tokens=3) for i in range(2)]
    for row in rows:
        row["completion_tokens"] = 17
    log = write_log(tmp_path / "log.parquet", rows)
    target = vllm_openai_target(tmp_path / "t.yaml", vllm_server)
    for mode, served in (("recorded", 17), ("natural", 3)):
        run_dir = tmp_path / mode
        replay_log(ReplayRequest(log=log, target_files=[target], run_dir=run_dir, workers=1, output_lengths=mode))
        finals = [r for r in pq.read_table(run_dir / "results").to_pylist() if r["final"]]
        assert [r["status"] for r in finals] == ["ok", "ok"]
        if mode == "recorded":
            assert all(r["completion_tokens"] == r["expected_completion_tokens"] == served for r in finals)
        else:
            assert all(r["completion_tokens"] <= served and r["expected_completion_tokens"] is None for r in finals)
        assert json.loads((run_dir / "manifest.json").read_text())["selection"]["output_lengths"] == mode
