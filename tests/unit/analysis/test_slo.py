"""analysis/metrics/slo.py: parsing --slo text into typed objects, canonical round-trips, clear errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowreplay.analysis.metrics.slo import SLO_METRICS, Slo, SloError, format_slos, parse_slos


def test_parses_the_documented_example_with_units():
    slos = parse_slos("ttft_p95=500ms, tpot_p95=50ms,e2e_p99=2s , itl_p99.9=0.5s,sched_ttft_p50 = 1.5e3ms")
    assert slos == (
        Slo("ttft", 95.0, 500.0),
        Slo("tpot", 95.0, 50.0),
        Slo("e2e", 99.0, 2000.0),
        Slo("itl", 99.9, 500.0),
        Slo("sched_ttft", 50.0, 1500.0),
    )
    assert [slo.name for slo in slos] == ["ttft_p95", "tpot_p95", "e2e_p99", "itl_p99.9", "sched_ttft_p50"]
    assert format_slos(slos) == "ttft_p95=500ms,tpot_p95=50ms,e2e_p99=2000ms,itl_p99.9=500ms,sched_ttft_p50=1500ms"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("ttft_p95=500ms,", "empty"),
        ("ttft_p95=500", "cannot read"),
        ("ttft_p95=500us", "cannot read"),
        ("ttft=500ms", "cannot read"),
        ("ttft_p95500ms", "cannot read"),
        ("latency_p95=1s", "unknown metric 'latency'"),
        ("ttft_p0=1s", "not in (0, 100]"),
        ("ttft_p101=1s", "not in (0, 100]"),
        ("ttft_p95=0ms", "finite positive"),
        ("ttft_p95=-5ms", "cannot read"),
        ("ttft_p95=1e400s", "finite positive"),
        ("ttft_p95=1s,ttft_p95=2s", "given twice"),
    ],
)
def test_bad_input_names_the_item(text, fragment):
    with pytest.raises(SloError) as info:
        parse_slos(text)
    assert fragment in str(info.value)


def test_the_same_metric_at_two_percentiles_is_allowed():
    assert len(parse_slos("ttft_p50=100ms,ttft_p99=1s")) == 2


slo_objects = st.builds(
    Slo,
    metric=st.sampled_from(list(SLO_METRICS)),
    percentile=st.floats(min_value=1e-6, max_value=100.0, allow_nan=False),
    threshold_ms=st.floats(min_value=1e-9, max_value=1e12, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(slo_objects, min_size=1, max_size=6, unique_by=lambda slo: slo.name))
def test_canonical_text_round_trips(slos):
    assert parse_slos(format_slos(slos)) == tuple(slos)


@settings(max_examples=150, deadline=None)
@given(
    metric=st.sampled_from(list(SLO_METRICS)),
    percentile=st.integers(1, 100),
    value=st.integers(1, 10**6),
    unit=st.sampled_from(["ms", "s"]),
)
def test_written_thresholds_are_read_in_milliseconds(metric, percentile, value, unit):
    (slo,) = parse_slos(f"{metric}_p{percentile}={value}{unit}")
    assert slo == Slo(metric, float(percentile), value * (1000.0 if unit == "s" else 1.0))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_text_parses_or_raises_slo_error(text):
    try:
        slos = parse_slos(text)
    except SloError:
        return
    assert all(isinstance(slo, Slo) for slo in slos)
