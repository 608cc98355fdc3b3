"""analysis/metrics/table.py and analysis/summary/run_summary.py against independent numpy / plain-Python computations.

Rows are built from specs (tests/support/results_factory.py), written as real Parquet shards, read back
with shadowreplay.analysis.data.run_data and summarized; the expected figures are computed here from the specs.
"""

from __future__ import annotations

import math
import random
from itertools import accumulate
from pathlib import Path
from typing import cast

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowreplay.analysis.data.run_data import load_run
from shadowreplay.analysis.metrics import table as metrics
from shadowreplay.analysis.metrics.slo import Slo, parse_slos
from shadowreplay.analysis.summary.models import LatencyStats, SliceStats
from shadowreplay.analysis.summary.run_summary import ERROR_STATUSES, summarize
from shadowreplay.replay.schemas.results import RESULTS_SCHEMA
from tests.support.results_factory import DONE_AFTER_LAST_TOKEN_MS, result_row, write_results


def frame(rows: list[dict]) -> pl.DataFrame:
    return cast(pl.DataFrame, pl.from_arrow(pa.Table.from_pylist(rows, schema=RESULTS_SCHEMA)))  # a Table: a DataFrame


# ---- single expressions ---------------------------------------------------------------------


def test_ttft_e2e_and_scheduled_latencies_follow_the_row_times():
    rows = [
        result_row("a", scheduled_s=2.0, lateness_ms=4.0, ttft_ms=30.0, gaps_ms=[10.0, 20.0]),
        result_row("b", scheduled_s=5.0, lateness_ms=0.5, ttft_ms=12.5, gaps_ms=[]),
    ]
    out = frame(rows).select(
        metrics.ttft_ms(), metrics.e2e_ms(), metrics.sched_ttft_ms(), metrics.sched_e2e_ms(), metrics.lateness_ms()
    )
    assert out["ttft_ms"].to_list() == [30.0, 12.5]
    assert out["e2e_ms"].to_list() == [60.0, 12.5]
    # first token: lateness + TTFT after the schedule; done: lateness + last token + the factory's done delay
    assert out["sched_ttft_ms"].to_list() == pytest.approx([34.0, 13.0])
    done_delay = DONE_AFTER_LAST_TOKEN_MS
    assert out["sched_e2e_ms"].to_list() == pytest.approx([64.0 + done_delay, 13.0 + done_delay])
    assert out["lateness_ms"].to_list() == [4.0, 0.5]


def test_itl_is_every_gap_between_consecutive_tokens():
    rows = [
        result_row("a", ttft_ms=10.0, gaps_ms=[1.0, 0.0, 7.5]),  # a 2-token chunk gives a 0 gap
        result_row("b", ttft_ms=10.0, gaps_ms=[]),
        result_row("c", ttft_ms=None, status="timeout"),
        result_row("d", ttft_ms=3.0, gaps_ms=[2.0]),
    ]
    gaps = frame(rows).select(metrics.itl_ms())["itl_ms"].to_list()
    assert gaps == pytest.approx([1.0, 0.0, 7.5, 2.0])
    per_request = frame(rows).select(metrics.itl_gaps_ms())["itl_gaps_ms"].to_list()
    assert per_request[0] == pytest.approx([1.0, 0.0, 7.5]) and per_request[1] == [] and per_request[3] == [2.0]


def test_gap_codes_on_the_flat_buffer_are_the_expressions_gaps_row_by_row():
    """metrics.gap_codes (the summary's pass over a shard) against gaps_of, one row at a time: empty and null
    lists, a missing token time inside a list (its two gaps are dropped), rows left out (code -1)."""
    lists = [[10.0, 11.0, 11.0, 18.5], [], None, [3.0], [1.0, None, 4.0, 9.0], [2.0, 5.0], [7.0, 8.0, 10.0]]
    row_codes = np.array([0, 1, 1, 2, 0, -1, 2], dtype=np.int32)
    column = pl.Series("t", lists, dtype=pl.List(pl.Float64))
    differences, codes = metrics.gap_codes(column, row_codes)
    for code in (0, 1, 2):
        rows = column.to_frame().filter(pl.Series(row_codes == code))
        expected = rows.select(metrics.gaps_of(pl.col("t")).drop_nulls()).to_series().to_list()
        assert differences[codes == code].tolist() == pytest.approx(expected), code
    assert differences[codes == 0].tolist() == pytest.approx([1.0, 0.0, 7.5, 5.0])
    assert metrics.gaps_of_collected(column).to_list() == pytest.approx([1.0, 0.0, 7.5, 5.0, 3.0, 1.0, 2.0])


def test_tpot_uses_output_tokens_and_is_null_for_one_token_or_none():
    rows = [
        result_row("three", ttft_ms=10.0, gaps_ms=[4.0, 6.0]),  # (20 - 10) / 2
        result_row("one", ttft_ms=10.0, gaps_ms=[]),
        result_row("zero", ttft_ms=10.0, gaps_ms=[], completion_tokens=0, client_tokens=0),
        # server says 6 tokens though the client saw 3 chunks: TPOT divides by server usage
        result_row("chunked", ttft_ms=10.0, gaps_ms=[5.0, 5.0], completion_tokens=6),
        # no server usage: the client count is used
        result_row("client", ttft_ms=10.0, gaps_ms=[5.0, 5.0, 5.0], completion_tokens=None, client_tokens=4),
    ]
    out = frame(rows).select(metrics.output_tokens(), metrics.tpot_ms())
    assert out["output_tokens"].to_list() == [3, 1, 0, 6, 4]
    assert out["tpot_ms"].to_list() == [5.0, None, None, 2.0, 5.0]


@pytest.mark.parametrize(
    ("server", "client", "flag"),
    [(100, 100, False), (100, 102, False), (100, 98, False), (100, 103, True), (100, 97, True), (0, 0, False),
     (0, 1, True), (None, 5, None), (5, None, None), (1, 2, True)],
)  # fmt: skip
def test_token_mismatch_flags_more_than_two_percent(server, client, flag):
    row = result_row("a", completion_tokens=server, client_tokens=client)
    assert frame([row]).select(metrics.token_mismatch()).item() is flag


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=40),
    p=st.floats(0.5, 100.0),
)
def test_percentile_is_numpy_linear(values, p):
    got = pl.DataFrame({"x": values}).select(metrics.percentile(pl.col("x"), p)).item()
    assert got == pytest.approx(float(np.percentile(values, p, method="linear")), rel=1e-9, abs=1e-6)


def test_percentile_keys():
    assert [metrics.percentile_key(p) for p in (50, 99.0, 99.9)] == ["p50", "p99", "p99.9"]


# ---- the steady window ----------------------------------------------------------------------


def _window_rows(scheduled: list[float]) -> pl.LazyFrame:
    return frame([result_row(f"r{i}", scheduled_s=s) for i, s in enumerate(scheduled)]).lazy()


def test_default_window_drops_a_tenth_of_the_span_and_the_drain():
    window = metrics.steady_window(_window_rows([10.0, 15.0, 30.0]))
    assert (window.kind, window.start_s, window.end_s) == ("steady", 12.0, 30.0)
    assert window.warmup_s == pytest.approx(2.0) and window.duration_s == pytest.approx(18.0)


def test_explicit_warmup_in_seconds():
    window = metrics.steady_window(_window_rows([10.0, 30.0]), warmup_s=5.0)
    assert (window.start_s, window.end_s, window.warmup_s) == (15.0, 30.0, 5.0)
    assert metrics.steady_window(_window_rows([10.0, 30.0]), warmup_s=0.0).start_s == 10.0


def test_a_burst_schedule_falls_back_to_the_whole_run():
    rows = _window_rows([3.0, 3.0])
    window = metrics.steady_window(rows)
    last_done = max(rows.collect()["done_s"].to_list())
    assert (window.kind, window.start_s, window.end_s) == ("whole_run", 3.0, last_done)


@pytest.mark.parametrize("warmup", [20.0, 25.0, -1.0])
def test_a_warmup_that_leaves_nothing_is_an_error(warmup):
    with pytest.raises(metrics.WindowError):
        metrics.steady_window(_window_rows([10.0, 30.0]), warmup_s=warmup)


# ---- per-request SLO checks -----------------------------------------------------------------


def test_meets_slo_per_request():
    rows = [
        result_row("fast", ttft_ms=100.0, gaps_ms=[10.0, 10.0, 10.0, 40.0]),
        result_row("slow", ttft_ms=900.0, gaps_ms=[10.0]),
        result_row("single", ttft_ms=100.0, gaps_ms=[]),
        result_row("empty", ttft_ms=None),  # ok but no token at all: has no TTFT to meet an SLO with
    ]
    df = frame(rows)

    def check(spec: str) -> list[bool]:
        (slo,) = parse_slos(spec)
        return df.select(metrics.meets_slo(slo)).to_series().to_list()

    assert check("ttft_p95=500ms") == [True, False, True, False]
    # fast: (170 - 100) / 4 = 17.5; slow: 10; single and empty have no TPOT, which passes
    assert check("tpot_p95=18ms") == [True, True, True, True]
    assert check("tpot_p95=17ms") == [False, True, True, True]
    # ITL: the SLO's percentile of the request's own gaps. fast's gaps p50 = 10, p99 = 39.1
    assert check("itl_p50=10ms") == [True, True, True, True]
    assert check("itl_p99=30ms") == [False, True, True, True]
    goodput_rows = df.select(metrics.meets_all_slos(parse_slos("ttft_p95=500ms,itl_p99=30ms"))).to_series().to_list()
    assert goodput_rows == [False, False, True, False]


# ---- a whole run, summarized ----------------------------------------------------------------

SLO_TEXT = "ttft_p95=150ms,tpot_p90=12ms,itl_p99=30ms,e2e_p50=400ms,sched_ttft_p95=160ms"


def make_specs(seed: int = 7) -> list[dict]:
    """Two targets, tags x / y / none, errors, retries with outlier values, 1-token outputs, mismatches."""
    rng = random.Random(seed)
    specs = []
    for i in range(60):
        scheduled = round(i * 0.5, 3)
        tag = ("x", "y", None)[i % 3]
        for target in ("alpha", "beta"):
            n_gaps = rng.choice([0, 1, 3, 8, 15])
            spec = dict(
                request_id=f"req-{i}",
                target=target,
                tag=tag,
                scheduled_s=scheduled,
                lateness_ms=round(rng.uniform(0.1, 3.0), 3),
                ttft_ms=round(rng.uniform(20, 200) * (1.5 if target == "beta" else 1.0), 3),
                gaps_ms=[round(rng.uniform(2, 40), 3) for _ in range(n_gaps)],
                completion_tokens=-1,
                client_tokens=-1,
                status="ok",
                http_status=200,
            )
            roll = rng.random()
            if roll < 0.08:
                spec.update(status="http_error", http_status=500, ttft_ms=None, gaps_ms=[])
            elif roll < 0.12:
                spec.update(status="timeout", http_status=None, ttft_ms=None, gaps_ms=[])
            elif roll < 0.2:
                spec.update(client_tokens=n_gaps + 1 + rng.choice([1, 3]))  # client miscounts
            elif roll < 0.25:
                spec.update(completion_tokens=None)  # no server usage
            if rng.random() < 0.1:  # a retried attempt before the final one, with absurd numbers
                retry = dict(spec, attempt=0, final=False, status="http_error", http_status=429, ttft_ms=99999.0,
                             gaps_ms=[99999.0], lateness_ms=99999.0)  # fmt: skip
                specs.append(retry)
                spec["attempt"] = 1
            specs.append(spec)
    return specs


def expected_request(spec: dict) -> dict:
    """The metrics of one spec, computed in plain Python from the inputs."""
    times = [] if spec["ttft_ms"] is None else list(accumulate([spec["ttft_ms"], *spec["gaps_ms"]]))
    n = len(times)
    server = n if spec["completion_tokens"] == -1 else spec["completion_tokens"]
    client = n if spec["client_tokens"] == -1 else spec["client_tokens"]
    tokens = server if server is not None else client
    sent = spec["scheduled_s"] + spec["lateness_ms"] / 1000
    last = times[-1] if times else None
    done = sent + ((last if last is not None else 30.0) + DONE_AFTER_LAST_TOKEN_MS) / 1000
    return {
        "ttft": spec["ttft_ms"],
        "e2e": last,
        "itl_gaps": [b - a for a, b in zip(times, times[1:])],
        "tpot": (last - spec["ttft_ms"]) / (tokens - 1) if tokens and tokens > 1 else None,
        "sched_ttft": None if spec["ttft_ms"] is None else (sent + spec["ttft_ms"] / 1000 - spec["scheduled_s"]) * 1000,
        "sched_e2e": (done - spec["scheduled_s"]) * 1000,
        "lateness": spec["lateness_ms"],
        "tokens": tokens,
        "server": server,
        "client": client,
        "done": done,
        "ok": spec["status"] == "ok",
    }


def np_stats(values: list[float]) -> dict:
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p95": None, "p99": None, "max": None}
    arr = np.asarray(values, dtype=float)
    return {
        "count": len(values),
        "mean": float(arr.mean()),
        **{f"p{p}": float(np.percentile(arr, p, method="linear")) for p in (50, 90, 95, 99)},
        "max": float(arr.max()),
    }


def expected_slice(specs: list[dict], slos: tuple[Slo, ...], window: tuple[float, float]) -> dict:
    final = [s for s in specs if s.get("final", True)]
    req = [expected_request(s) for s in final]
    ok = [r for r in req if r["ok"]]
    start, end = window

    def own_value(r: dict, slo: Slo) -> float | None:
        if slo.metric == "itl":
            return float(np.percentile(r["itl_gaps"], slo.percentile)) if r["itl_gaps"] else None
        return r[slo.metric]

    def meets(r: dict, slo: Slo) -> bool:
        value = own_value(r, slo)
        return slo.metric in ("tpot", "itl") if value is None else value <= slo.threshold_ms

    in_window = [r for r in ok if start <= r["done"] <= end]
    samples = {m: [r[m] for r in ok if r[m] is not None] for m in ("ttft", "tpot", "e2e", "sched_ttft", "sched_e2e")}
    samples["itl"] = [g for r in ok for g in r["itl_gaps"]]
    samples["lateness"] = [r["lateness"] for r in req]
    latency = {m: np_stats(values) for m, values in samples.items()}
    compared = [r for r in ok if r["server"] is not None and r["client"] is not None]
    return {
        "requests": len(final),
        "ok": len(ok),
        "errors": len(final) - len(ok),
        "errors_by_status": {s: sum(1 for f in final if f["status"] == s) for s in ERROR_STATUSES},
        "attempts": len(specs),
        "retries": len(specs) - len(final),
        "latency_ms": latency,
        "output_tokens_total": sum(r["tokens"] for r in ok),
        "mismatch": (len(compared), sum(1 for r in compared if abs(r["server"] - r["client"]) / r["server"] > 0.02)),
        "window_completed": len(in_window),
        "window_tokens": sum(r["tokens"] for r in in_window),
        "window_good": sum(1 for r in in_window if all(meets(r, s) for s in slos)),
        "slo_values": [float(np.percentile(samples[s.metric], s.percentile)) for s in slos],
        "slo_meeting": [sum(1 for r in ok if meets(r, s)) for s in slos],
    }


def assert_stats(got: LatencyStats, want: dict) -> None:
    assert got.count == want["count"]
    for key in ("mean", "p50", "p90", "p95", "p99", "max"):
        value = getattr(got, key)
        if want[key] is None:
            assert value is None
        else:
            assert value == pytest.approx(want[key], rel=1e-9, abs=1e-9), key


def assert_slice(
    got: SliceStats, specs: list[dict], slos: tuple[Slo, ...], window: tuple[float, float], duration: float
):
    want = expected_slice(specs, slos, window)
    for key in ("requests", "ok", "errors", "errors_by_status", "attempts", "retries"):
        assert getattr(got, key) == want[key], key
    assert got.error_rate == pytest.approx(want["errors"] / want["requests"])
    for name, stats in want["latency_ms"].items():
        assert_stats(got.latency_ms[name], stats)
    gaps = want["latency_ms"]["itl"]["count"]
    assert got.multi_token_reads.model_dump() == {"zero_gaps": 0, "gaps": gaps, "share": 0.0 if gaps else None}
    assert got.output_tokens.total == want["output_tokens_total"]
    assert (got.token_mismatch.compared, got.token_mismatch.mismatched) == want["mismatch"]
    assert got.window.model_dump() == {
        "completed": want["window_completed"],
        "output_tokens": want["window_tokens"],
        "good": want["window_good"],
    }
    assert got.throughput.requests_per_s == pytest.approx(want["window_completed"] / duration)
    assert got.throughput.output_tokens_per_s == pytest.approx(want["window_tokens"] / duration)
    assert got.throughput.goodput_rps == pytest.approx(want["window_good"] / duration)
    for result, value, meeting, slo in zip(got.slo, want["slo_values"], want["slo_meeting"], slos):
        assert result.slo == str(slo)
        assert result.value_ms == pytest.approx(value)
        assert result.met == (value <= slo.threshold_ms)
        assert result.requests_meeting == meeting
    assert got.slos_met == all(r.met for r in got.slo)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> tuple[Path, list[dict]]:
    run_dir = tmp_path_factory.mktemp("run")
    specs = make_specs()
    write_results(run_dir, [result_row(**spec) for spec in specs], shards=3, manifest={"run_id": "run-factory"})
    return run_dir, specs


def test_summary_matches_independent_computation_per_target_and_tag(scenario):
    run_dir, specs = scenario
    slos = parse_slos(SLO_TEXT)
    summary = summarize(load_run(run_dir), slos)
    first = min(s["scheduled_s"] for s in specs)
    last = max(s["scheduled_s"] for s in specs)
    start = first + 0.1 * (last - first)
    assert summary.window.kind == "steady"
    assert summary.window.start_s == pytest.approx(start)
    assert summary.window.end_s == last
    duration = last - start
    assert summary.source.model_dump() == {
        "results_files": 3,
        "rows": len(specs),
        "final_rows": sum(1 for s in specs if s.get("final", True)),
        "requests_without_final_row": 0,
        "manifest": "manifest.json",
    }
    assert list(summary.targets) == ["alpha", "beta"]
    for target in ("alpha", "beta"):
        entry = summary.targets[target]
        mine = [s for s in specs if s["target"] == target]
        assert_slice(entry.all, mine, slos, (start, last), duration)
        assert [t.tag for t in entry.tags] == ["x", "y", None]
        for tagged in entry.tags:
            assert_slice(tagged, [s for s in mine if s["tag"] == tagged.tag], slos, (start, last), duration)


def test_scenario_exercises_every_path(scenario):
    """Guards the fixture: retries, errors, mismatches and 1-token outputs are all present."""
    _, specs = scenario
    final = [expected_request(s) for s in specs if s.get("final", True)]
    assert any(not s.get("final", True) for s in specs)
    assert {s["status"] for s in specs} >= {"ok", "http_error", "timeout"}
    assert any(r["ok"] and r["tokens"] == 1 for r in final)
    assert any(r["ok"] and r["server"] is None for r in final)
    assert any(r["ok"] and r["server"] and abs(r["server"] - r["client"]) / r["server"] > 0.02 for r in final)


def test_retried_attempts_do_not_move_latency(scenario, tmp_path):
    """The same run without its non-final rows gives the same latency figures, fewer attempts."""
    run_dir, specs = scenario
    write_results(tmp_path, [result_row(**s) for s in specs if s.get("final", True)])
    with_retries = summarize(load_run(run_dir)).targets
    without = summarize(load_run(tmp_path)).targets
    retried = sum(1 for s in specs if not s.get("final", True))
    assert retried > 0
    assert sum(t.all.retries for t in with_retries.values()) == retried
    for target in with_retries:
        for name, stats in without[target].all.latency_ms.items():
            assert_stats(with_retries[target].all.latency_ms[name], stats.model_dump())
        assert without[target].all.retries == 0


def test_explicit_warmup_moves_the_window(scenario):
    run_dir, specs = scenario
    summary = summarize(load_run(run_dir), warmup_s=10.0)
    last = max(s["scheduled_s"] for s in specs)
    assert summary.window.start_s == 10.0 and summary.window.duration_s == pytest.approx(last - 10.0)
    alpha = [expected_request(s) for s in specs if s["target"] == "alpha" and s.get("final", True)]
    done_in = sum(1 for r in alpha if r["ok"] and 10.0 <= r["done"] <= last)
    assert summary.targets["alpha"].all.window.completed == done_in
    assert summary.targets["alpha"].all.throughput.goodput_rps is None  # no SLOs given
    assert summary.targets["alpha"].all.slos_met is None


def test_untagged_runs_have_no_tag_slices(tmp_path):
    write_results(tmp_path, [result_row(f"r{i}", scheduled_s=float(i)) for i in range(5)])
    summary = summarize(load_run(tmp_path))
    assert summary.targets["target-a"].tags == []
    p50 = summary.targets["target-a"].all.latency_ms["ttft"].p50
    assert p50 is not None and not math.isnan(p50)


def test_a_tag_whose_every_request_failed_has_its_slice(tmp_path):
    """A tag with no ok row has no ITL gaps at all: its slice still has every figure, empty."""
    rows = [result_row(f"r{i}", scheduled_s=float(i), tag="good", gaps_ms=[4.0, 0.0]) for i in range(5)]
    rows += [result_row(f"f{i}", scheduled_s=float(i), tag="down", status="http_error", ttft_ms=None) for i in range(3)]
    write_results(tmp_path, rows)
    tags = {entry.tag: entry for entry in summarize(load_run(tmp_path)).targets["target-a"].tags}
    assert sorted(tags) == ["down", "good"]
    assert (tags["down"].requests, tags["down"].errors, tags["down"].latency_ms["itl"].count) == (3, 3, 0)
    assert tags["down"].multi_token_reads.model_dump() == {"zero_gaps": 0, "gaps": 0, "share": None}
    assert tags["good"].multi_token_reads.model_dump() == {"zero_gaps": 5, "gaps": 10, "share": 0.5}
