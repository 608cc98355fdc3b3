"""SweepSearch's logic on constructed curves: each saturation criterion, the repeats of a curve that
contradicts itself, and an SLO capacity never above a confirmed miss. The point measurer is a fake
that answers from a table of figures per load level (one entry per measurement of that level), so
no server runs."""

from __future__ import annotations

import pytest

from shadowreplay.analysis.metrics.slo import parse_slos
from shadowreplay.analysis.summary.models import CurvePoint, SweepSummary
from shadowreplay.loadgen.sweep import (
    ErrorRate,
    Follow,
    LatencyRise,
    Reference,
    SweepSearch,
    SweepSettings,
    ThroughputPeak,
    criteria,
)

SLO = parse_slos("ttft_p95=1s")


def figures(achieved: float, ttft_p95: float, errors: float = 0.0, tokens: float | None = None) -> dict:
    """A point's measured figures (what run_summary.py would give), output tokens 10 per request."""
    return {
        "achieved_rps": achieved,
        "output_tokens_per_s": achieved * 10 if tokens is None else tokens,
        "ttft_p50_ms": ttft_p95 / 2,
        "ttft_p95_ms": ttft_p95,
        "error_rate": errors,
    }


class FakeMeasurer:
    """Answers each measurement of a level with the next figures listed for it (the last repeats);
    a level not listed (a bisection point) is answered by `between`."""

    def __init__(self, settings: SweepSettings, by_level: dict[float, list[dict]], between=None):
        self.settings = settings
        self.by_level = {round(k, 6): list(v) for k, v in by_level.items()}
        self.between = between
        self.calls: list[tuple[float, str, int | None]] = []

    def __call__(self, index: int, level: float, phase: str, repeat_of: int | None) -> dict:
        self.calls.append((level, phase, repeat_of))
        queue = self.by_level.get(round(level, 6))
        if queue is None:
            assert self.between is not None, f"unexpected level {level}"
            measured = self.between(level)
        else:
            measured = queue.pop(0) if len(queue) > 1 else queue[0]
        poisson = self.settings.shape == "poisson"
        slo_met = None
        if self.settings.slos:
            slo_met = measured["ttft_p95_ms"] <= SLO[0].threshold_ms
        return CurvePoint(
            point=index,
            phase=phase,  # type: ignore[arg-type]
            shape=self.settings.shape,
            offered_rps=float(level) if poisson else None,
            concurrency=None if poisson else int(level),
            requests=100,
            tpot_p95_ms=10.0,
            e2e_p95_ms=measured["ttft_p95_ms"] + 500,
            gpu_util_mean_pct=None,
            joules_per_output_token=None,
            slo_met=slo_met,
            run_dir=f"points/{index:02d}",
            repeat_of=repeat_of,
            **measured,
        ).model_dump()


def search(settings: SweepSettings, by_level: dict[float, list[dict]], between=None):
    measurer = FakeMeasurer(settings, by_level, between)
    notes: list[str] = []
    outcome = SweepSearch(settings, measurer, on_note=notes.append).run()
    return outcome, measurer, notes


def poisson(levels: list[float], **extra) -> SweepSettings:
    return SweepSettings(shape="poisson", start=levels[0], stop=levels[-1], points=len(levels), **extra)


def test_levels_are_the_geometric_series_the_fakes_answer():
    assert poisson([1, 2, 4, 8]).levels() == pytest.approx([1, 2, 4, 8])


# ---- each criterion -----------------------------------------------------------------------------


def test_follow_fires_when_achieved_stops_following_the_offered_load():
    # The issue's sweep: 40 req/s offered, 30.4 achieved, TTFT p95 2,365 ms; TTFT alone is 4.7x.
    settings = poisson([5, 10, 20, 40], recheck=False)
    outcome, _, _ = search(
        settings,
        {
            5: [figures(5, 500)],
            10: [figures(10, 550)],
            20: [figures(19.8, 800, tokens=250)],
            40: [figures(30.4, 2365, tokens=240)],
        },
    )
    saturation = outcome.saturation
    assert saturation is not None and saturation["point"] == 3 and saturation["level"] == 40
    assert [c["criterion"] for c in saturation["criteria"]] == ["follow", "throughput"]
    follow = saturation["criteria"][0]
    assert follow["value"] == pytest.approx(30.4 / 40) and follow["limit"] == 0.9
    assert "30.4 req/s done of the 40 req/s sent (76%, under 90%)" in saturation["reason"]
    assert outcome.curve[3]["saturation"] == "follow,throughput"
    assert [p["saturation"] for p in outcome.curve[:3]] == [None, None, None]


def test_follow_compares_what_was_done_lag_for_lag_with_what_was_sent():
    # Poisson drew 8 req/s in the window for a nominal 10; a slow window edge left achieved at 6.
    point = {"offered_rps": 10.0, "achieved_rps": 6.0, "sent_rps": 8.0, "kept_rps": 7.6, "requests": 100}
    assert Follow(0.9).check(point, Reference(None, None)) is None  # 95% of what was sent: it keeps up
    finding = Follow(0.9).check(point | {"kept_rps": 7.0}, Reference(None, None))
    assert finding is not None and finding.value == pytest.approx(7 / 8)
    assert finding.text == "7 req/s done of the 8 req/s sent (88%, under 90%)"
    closed_loop = {"offered_rps": None, "achieved_rps": 3.0, "sent_rps": None, "kept_rps": None, "requests": 100}
    assert Follow(0.9).check(closed_loop, Reference(None, None)) is None
    # Ten requests at 1 req/s, one short at the window's edge: 88%, but counting noise, not saturation.
    small = {"offered_rps": 1.0, "achieved_rps": 1.04, "sent_rps": 1.19, "kept_rps": 1.04, "requests": 11}
    assert Follow(0.9).check(small, Reference(None, None)) is None
    assert Follow(0.9).check(small | {"requests": 60}, Reference(None, None)) is not None


def test_latency_fires_on_a_ttft_explosion_over_the_lowest_load_point():
    settings = poisson([1, 2, 4, 8], recheck=False)
    outcome, _, _ = search(
        settings,
        {1: [figures(1, 150)], 2: [figures(2, 160)], 4: [figures(4, 900)], 8: [figures(7.9, 1600)]},
    )
    assert outcome.saturation is not None and outcome.saturation["point"] == 3
    assert [c["criterion"] for c in outcome.saturation["criteria"]] == ["latency"]
    assert outcome.saturation["criteria"][0]["value"] == pytest.approx(1600 / 150)
    assert "TTFT p95 1,600 ms is 10.7x the lowest load's 150 ms (point 0; over 10x)" in outcome.saturation["reason"]


def test_latency_baseline_has_a_floor():
    base = {"point": 0, "ttft_p95_ms": 5.0}
    rise = LatencyRise(10.0, 100.0)
    assert rise.check({"ttft_p95_ms": 90.0}, Reference(base, None)) is None  # 18x of 5 ms, but under 10 x 100 ms
    assert rise.check({"ttft_p95_ms": 1001.0}, Reference(base, None)) is not None
    assert rise.check({"ttft_p95_ms": 1001.0}, Reference(None, None)) is None  # the first point has no baseline


def test_errors_fire_above_the_limit():
    assert ErrorRate(0.1).check({"error_rate": 0.1}, Reference(None, None)) is None
    finding = ErrorRate(0.1).check({"error_rate": 0.25}, Reference(None, None))
    assert finding is not None and finding.text == "error rate 25.0% above 10%"


def test_throughput_fires_below_an_earlier_peak_not_only_the_previous_point():
    settings = SweepSettings(shape="concurrency", start=1, stop=8, points=4, recheck=False)
    assert settings.levels() == [1, 2, 4, 8]
    outcome, _, _ = search(
        settings,
        {
            1: [figures(1, 100, tokens=100)],
            2: [figures(2, 100, tokens=1000)],
            4: [figures(2, 100, tokens=1050)],  # +5.0%: not under +5%
            8: [figures(2, 100, tokens=1200)],
        },
    )
    assert outcome.saturation is None
    # 4 users dip to 800 tok/s (an outlier: its repeat gives 1,100); 8 users give 1,050 tok/s, +31% over
    # the point measured just before (the dip) but under the peak of 1,100: saturated.
    outcome, _, _ = search(
        SweepSettings(shape="concurrency", start=1, stop=8, points=4, recheck=True),
        {
            1: [figures(1, 100, tokens=100)],
            2: [figures(2, 100, tokens=1000)],
            4: [figures(2, 100, tokens=800), figures(2, 100, tokens=1100)],
            8: [figures(2, 100, tokens=1050), figures(2, 100, tokens=1040)],
        },
    )
    assert [p["concurrency"] for p in outcome.curve] == [1, 2, 4, 4, 8, 8]
    assert outcome.curve[2]["outlier"] and outcome.curve[2]["saturation"] == "throughput"
    assert outcome.saturation is not None and outcome.saturation["point"] == 4
    finding = outcome.saturation["criteria"][0]
    assert finding["criterion"] == "throughput" and finding["value"] == pytest.approx(1050 / 1100 - 1)
    assert "against the peak 1,100 tok/s of point 3 (under +5%)" in finding["text"]


def test_a_closed_loop_sweep_has_no_follow_criterion():
    names = [c.name for c in criteria(SweepSettings(shape="concurrency", start=1, stop=4))]
    assert names == ["errors", "latency", "throughput"]
    assert [c.name for c in criteria(poisson([1, 2]))] == ["errors", "follow", "latency", "throughput"]
    assert isinstance(criteria(poisson([1, 2]))[-1], ThroughputPeak)


def test_no_criterion_fires_on_a_curve_that_keeps_up():
    settings = poisson([1, 2, 4], recheck=False)
    outcome, _, _ = search(settings, {1: [figures(1, 100)], 2: [figures(1.95, 110)], 4: [figures(3.9, 130)]})
    assert outcome.saturation is None and all(p["saturation"] is None for p in outcome.curve)


# ---- repeats ------------------------------------------------------------------------------------


def test_a_saturated_point_is_measured_again_and_an_outlier_does_not_stop_the_ramp():
    settings = poisson([2, 4, 8], recheck=True)
    outcome, measurer, notes = search(
        settings,
        {2: [figures(2, 100)], 4: [figures(1.2, 900, errors=0.06), figures(3.95, 120)], 8: [figures(7.9, 140)]},
    )
    assert [(round(level, 6), phase, repeat_of) for level, phase, repeat_of in measurer.calls] == [
        (2, "ramp", None),
        (4, "ramp", None),
        (4, "repeat", 1),
        (8, "ramp", None),
    ]
    assert outcome.saturation is None
    assert outcome.curve[1]["outlier"] and outcome.curve[2]["repeat_of"] == 1 and not outcome.curve[2]["outlier"]
    assert outcome.repeats == [
        {
            "point": 1,
            "repeat": 2,
            "level": pytest.approx(4.0),
            "why": "saturated",
            "verdict": "outlier",
            "text": "repeat point 2 not saturated: point 1 was an outlier (both are shown; the repeat is used)",
        }
    ]
    assert notes[0].startswith("point 1 (4 req/s) saturated (follow,throughput); measuring it again as point 2")


def test_a_saturation_its_repeat_confirms_stops_the_ramp():
    settings = poisson([2, 4, 8], recheck=True)
    outcome, measurer, _ = search(settings, {2: [figures(2, 100)], 4: [figures(2.5, 900)], 8: [figures(2.5, 5000)]})
    assert [c[1] for c in measurer.calls] == ["ramp", "ramp", "repeat"]
    assert outcome.saturation is not None
    assert outcome.saturation["point"] == 1 and outcome.saturation["confirmed_by"] == 2
    assert outcome.repeats[0]["verdict"] == "confirmed"


ISSUE_LEVELS = [1.0, 3.634, 13.21, 48.0]  # np.geomspace(1, 48, 4)


def issue_settings(**extra) -> SweepSettings:
    return SweepSettings(shape="poisson", start=1, stop=48, points=4, slos=SLO, **extra)


def by_issue_level(*answers: list[dict]) -> dict[float, list[dict]]:
    return dict(zip(issue_settings().levels(), answers, strict=True))


def test_the_issues_contradicting_curve_repeats_the_bad_point_and_a_confirmed_one_caps_the_capacity():
    # The issue's run: 13.2 req/s achieved 4.93 with TTFT p95 7,700 ms and 6.1% errors; 48 req/s then
    # achieved 35.9 with 591 ms. Here the repeat of 13.2 req/s saturates again: the ramp stops there,
    # and the SLO capacity is bisected below it (48 req/s is never trusted).
    assert issue_settings().levels() == pytest.approx(ISSUE_LEVELS, rel=1e-3)
    outcome, measurer, notes = search(
        issue_settings(bisect_steps=1),
        by_issue_level(
            [figures(1, 300)],
            [figures(3.6, 350)],
            [figures(4.93, 7700, errors=0.061), figures(5.2, 7100, errors=0.05)],
            [figures(35.9, 591)],
        ),
        between=lambda level: figures(level, 400),
    )
    assert [(round(level, 2), phase) for level, phase, _ in measurer.calls] == [
        (1.0, "ramp"),
        (3.63, "ramp"),
        (13.21, "ramp"),
        (13.21, "repeat"),
        (6.93, "bisect"),
    ]
    saturation = outcome.saturation
    assert saturation is not None and saturation["point"] == 2 and saturation["confirmed_by"] == 3
    assert [c["criterion"] for c in saturation["criteria"]] == ["follow", "latency"]
    assert outcome.slo_capacity == pytest.approx((3.634 * 13.21) ** 0.5, rel=1e-3)
    assert "point 2 (13.2 req/s) saturated (follow,latency); measuring it again as point 3" in notes[0]


def test_a_point_where_every_request_failed_is_not_measured_again():
    outcome, measurer, _ = search(poisson([1, 2]), {1: [figures(0, 100, errors=1.0)], 2: [figures(2, 100)]})
    assert len(measurer.calls) == 1 and outcome.saturation is not None
    assert outcome.saturation["confirmed_by"] is None and outcome.repeats == []


def test_the_issues_curve_with_an_outlier_repeat_goes_on_and_shows_both():
    outcome, _, notes = search(
        issue_settings(bisect_steps=0),
        by_issue_level(
            [figures(1, 300)],
            [figures(3.6, 350)],
            [figures(4.93, 7700, errors=0.061), figures(13.1, 420)],  # the repeat keeps up and meets
            [figures(47.4, 591)],
        ),
    )
    assert [p["phase"] for p in outcome.curve] == ["ramp", "ramp", "ramp", "repeat", "ramp"]
    assert outcome.curve[2]["outlier"] and outcome.curve[2]["saturation"] == "follow,latency"
    assert outcome.saturation is None and outcome.slo_capacity == 48
    assert outcome.repeats[0]["verdict"] == "outlier" and "point 2 was an outlier" in notes[-1]


def test_a_missed_point_below_a_met_one_is_measured_again_and_a_confirmed_miss_caps_the_capacity():
    outcome, measurer, _ = search(
        issue_settings(bisect_steps=2),
        by_issue_level(
            [figures(1, 300)],
            [figures(3.6, 350)],
            [figures(13.0, 1500), figures(12.9, 1700)],  # misses the 1 s SLO, twice; keeps up
            [figures(47.5, 591)],  # meets, above it
        ),
        between=lambda level: figures(level, 300 + level * 40),  # 6.9 req/s: 577 ms; 9.6 req/s: 682 ms
    )
    phases = [(round(level, 2), phase) for level, phase, _ in measurer.calls]
    assert phases[:5] == [(1.0, "ramp"), (3.63, "ramp"), (13.21, "ramp"), (48.0, "ramp"), (13.21, "repeat")]
    assert [phase for _, phase in phases[5:]] == ["bisect", "bisect"]
    repeat = outcome.curve[4]
    assert repeat["repeat_of"] == 2 and repeat["slo_met"] is False and not outcome.curve[2]["outlier"]
    assert outcome.repeats[0]["verdict"] == "confirmed" and outcome.repeats[0]["why"] == "missed"
    assert outcome.saturation is None
    assert outcome.slo_capacity is not None and outcome.slo_capacity < 13.21
    assert outcome.slo_capacity == pytest.approx(max(p["offered_rps"] for p in outcome.curve[5:] if p["slo_met"]))
    assert all(3.63 < p["offered_rps"] < 13.21 for p in outcome.curve[5:])  # bisected below the confirmed miss


def test_without_a_repeat_the_capacity_is_still_never_above_a_missed_point():
    settings = SweepSettings(shape="poisson", start=1, stop=8, points=4, slos=SLO, recheck=False, bisect_steps=0)
    outcome, measurer, _ = search(
        settings, {1: [figures(1, 300)], 2: [figures(2, 1500)], 4: [figures(4, 400)], 8: [figures(8, 500)]}
    )
    assert outcome.repeats == [] and all(phase != "repeat" for _, phase, _ in measurer.calls)
    assert outcome.slo_capacity == 1  # not 8: the miss at 2 req/s stands


def test_a_missed_point_whose_repeat_meets_is_an_outlier_and_both_are_shown():
    settings = SweepSettings(shape="poisson", start=1, stop=8, points=4, slos=SLO, recheck=True, bisect_steps=1)
    outcome, measurer, notes = search(
        settings,
        {
            1: [figures(1, 300)],
            2: [figures(2, 1500), figures(2, 320)],  # a miss below a met point; the repeat meets
            4: [figures(4, 400)],
            8: [figures(7.95, 2500)],  # misses (and keeps up: no saturation)
        },
        between=lambda level: figures(level, 600),
    )
    assert [p["phase"] for p in outcome.curve] == ["ramp", "ramp", "ramp", "ramp", "repeat", "bisect"]
    assert outcome.curve[1]["outlier"] and outcome.curve[4]["repeat_of"] == 1 and outcome.curve[4]["slo_met"]
    assert outcome.repeats[0]["verdict"] == "outlier"
    assert any("point 1 was an outlier" in n for n in notes)
    assert outcome.curve[5]["offered_rps"] == pytest.approx(8**0.5 * 2)  # bisecting between 4 and 8
    assert outcome.slo_capacity == pytest.approx(outcome.curve[5]["offered_rps"])


def test_a_saturated_point_that_meets_the_slo_is_no_capacity():
    settings = SweepSettings(shape="poisson", start=1, stop=4, points=3, slos=SLO, recheck=False, bisect_steps=0)
    outcome, _, _ = search(settings, {1: [figures(1, 200)], 2: [figures(2, 250)], 4: [figures(2.6, 900)]})
    assert outcome.saturation is not None and outcome.curve[2]["slo_met"] is True
    assert outcome.slo_capacity == 2  # 4 req/s met the SLO on the requests it served, but did not serve them


def test_a_bisection_point_is_judged_but_not_held_to_the_throughput_peak():
    settings = SweepSettings(shape="poisson", start=1, stop=4, points=3, slos=SLO, recheck=False, bisect_steps=1)
    # 2.83 req/s: output tokens 1% over the point below (fine for a bisection point), but 50% errors
    outcome, _, _ = search(
        settings,
        {1: [figures(1, 200)], 2: [figures(2, 250)], 4: [figures(4, 1500)]},
        between=lambda level: figures(level * 0.99, 300, tokens=20.2),
    )
    bisect = outcome.curve[3]
    assert (
        bisect["phase"] == "bisect" and bisect["saturation"] is None and outcome.slo_capacity == bisect["offered_rps"]
    )
    outcome, _, _ = search(
        settings,
        {1: [figures(1, 200)], 2: [figures(2, 250)], 4: [figures(4, 1500)]},
        between=lambda level: figures(level, 300, errors=0.5),
    )
    assert outcome.curve[3]["saturation"] == "errors"
    assert outcome.slo_capacity == 2


def test_the_summary_model_reads_version_1_and_version_2_sweeps():
    old = {
        "target": "t",
        "shape": "poisson",
        "levels": [1.0],
        "duration_s": 5.0,
        "slos": None,
        "saturation": {"point": 0, "level": 1.0, "reason": "error rate 50.0% above 10%"},
        "points": 1,
        "curve": "curve.parquet",
        "schema_version": 1,
    }
    summary = SweepSummary.model_validate(old)
    assert summary.saturation is not None and summary.saturation.criteria == [] and summary.repeats == []


def test_sweep_settings_read_back_from_their_record_as_a_resumed_sweep_gets_them():
    import json

    from shadowreplay.analysis.metrics.slo import parse_slos
    from shadowreplay.loadgen.sweep import SweepSettings
    from shadowreplay.replay.run.plan import LengthClamp

    settings = SweepSettings(
        shape="trace",
        start=2.0,
        stop=9.5,
        points=4,
        duration_s=7.5,
        slos=parse_slos("ttft_p95=500ms,tpot_p99=40ms"),
        seed=11,
        clamp=LengthClamp(max_prompt_tokens=900, max_completion_tokens=64, output_lengths="natural"),
        recheck=False,
    )
    record = json.loads(json.dumps(settings.record()))  # as the manifest holds it
    assert record["slos"] == "ttft_p95=500ms,tpot_p99=40ms"
    assert SweepSettings.from_record(record) == settings
    assert SweepSettings.from_record(SweepSettings(shape="poisson", start=1, stop=2).record()).slos == ()
