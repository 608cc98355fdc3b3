"""Load shapes: bounds, monotonicity, exact scaling, and the statistics each promises (fixed seeds)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowreplay.loadgen.shapes import (
    ConstantRate,
    FixedConcurrency,
    Gamma,
    OpenLoopShape,
    Poisson,
    Ramp,
    Step,
    TraceScaled,
)


def times(shape) -> np.ndarray:
    return np.fromiter(shape.send_times(), dtype=float)


def test_constant_rate_is_exact_and_bounded():
    assert list(times(ConstantRate(4, duration_s=1))) == [0, 0.25, 0.5, 0.75]
    assert len(times(ConstantRate(1000, count=7))) == 7
    assert len(times(ConstantRate(10, duration_s=1, count=3))) == 3  # the tighter bound wins
    with pytest.raises(ValueError, match="bound"):
        ConstantRate(1)


def test_poisson_has_its_rate_and_unit_cv():
    t = times(Poisson(50, count=20_000, seed=3))
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)
    assert np.array_equal(t, times(Poisson(50, count=20_000, seed=3)))  # deterministic per seed
    assert not np.array_equal(t, times(Poisson(50, count=20_000, seed=4)))


def test_poisson_counts_in_fixed_windows_have_variance_equal_to_mean():
    t = times(Poisson(20, duration_s=2000, seed=11))
    counts = np.histogram(t, bins=np.arange(0, 2001, 1.0))[0]
    assert counts.mean() == pytest.approx(20, rel=0.02)
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.1)  # Fano factor of a Poisson process


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_burstiness_is_the_squared_cv(burstiness):
    gaps = np.diff(times(Gamma(20, burstiness, count=40_000, seed=1)))
    assert gaps.mean() == pytest.approx(1 / 20, rel=0.05)
    assert (gaps.std() / gaps.mean()) ** 2 == pytest.approx(burstiness, rel=0.1)


def test_ramp_rate_rises_and_its_count_is_the_rate_integral():
    t = times(Ramp(1, 21, duration_s=10))
    assert len(t) == pytest.approx(110, abs=1)  # integral of the rate: (1 + 21) / 2 * 10
    per_second = np.histogram(t, bins=np.arange(0, 11))[0]
    assert np.all(np.diff(per_second) >= 0) and per_second[-1] > 5 * per_second[0]


def test_ramp_from_zero_and_ramp_down_end_at_their_duration():
    up = times(Ramp(0, 10, duration_s=4))
    assert len(up) == 20 and up[0] == 0 and up[-1] < 4
    assert up[1] == pytest.approx(np.sqrt(2 * 4 / 10))  # where 10/4 * t^2 / 2 reaches 1
    down = times(Ramp(10, 1, duration_s=10))
    assert len(down) == 55  # sends where the integral reaches 0, 1, ..., 54 (it totals 55)
    assert np.all(np.isfinite(down)) and down[-1] < 10
    per_second = np.histogram(down, bins=np.arange(0, 11))[0]
    assert per_second[0] > per_second[-1]


def test_poisson_ramp_follows_the_rate_on_average():
    t = times(Ramp(5, 45, duration_s=100, seed=2))
    assert len(t) == pytest.approx(2500, rel=0.05)
    first, last = np.sum(t < 20), np.sum(t >= 80)
    # Expected: integral of the rate over [0, 20) = 180 and over [80, 100) = 820.
    assert first == pytest.approx(180, rel=0.2) and last == pytest.approx(820, rel=0.1)


def test_step_follows_its_stages_including_a_pause():
    s = times(Step(((1.0, 2.0), (1.0, 0.0), (1.0, 10.0))))
    assert list(s[:2]) == [0.0, 0.5]
    assert np.sum((s >= 1) & (s < 2)) == 0  # the pause
    assert np.sum(s >= 2) == 10 and s[2] == 2.0
    assert len(times(Step(((1.0, 100.0),), count=5))) == 5


def test_poisson_step_has_each_stage_rate():
    s = times(Step(((200.0, 5.0), (200.0, 20.0)), seed=5))
    assert np.sum(s < 200) == pytest.approx(1000, rel=0.08)
    assert np.sum(s >= 200) == pytest.approx(4000, rel=0.05)
    assert np.array_equal(s, times(Step(((200.0, 5.0), (200.0, 20.0)), seed=5)))


def test_trace_scaled_divides_the_offsets_exactly():
    assert list(times(TraceScaled([0, 1, 3], speed=2))) == [0, 0.5, 1.5]
    offsets = [0.0, 0.5, 2.0, 2.0, 4.0]  # native rate (5 - 1) / 4 = 1 request/s
    scaled = times(TraceScaled(offsets, target_rate=4))
    assert list(scaled) == [o / 4 for o in offsets]
    assert TraceScaled(offsets, target_rate=4).effective_speed == 4


def test_trace_scaled_rejects_offsets_that_go_back_in_time():
    with pytest.raises(ValueError, match="offset 2 goes back"):
        TraceScaled([0, 2, 1])
    with pytest.raises(ValueError, match="two distinct offsets"):
        TraceScaled([3, 3], target_rate=1)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Poisson(0, count=1),
        lambda: Gamma(1, 0, count=1),
        lambda: Step(()),
        lambda: Step(((0.0, 1.0),)),
        lambda: Ramp(0, 0, duration_s=1),
        lambda: Ramp(-1, 1, duration_s=1),
        lambda: TraceScaled([0, 1], speed=0),
        lambda: FixedConcurrency(0),
    ],
)
def test_bad_parameters_fail_at_construction(make):
    with pytest.raises(ValueError):
        make()


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["constant", "poisson", "gamma", "ramp", "ramp_poisson", "step", "step_poisson"]),
    st.floats(0.5, 200),
    st.integers(0, 1000),
)
def test_open_loop_times_are_non_decreasing_and_inside_the_duration(kind, rate, seed):
    shape = {
        "constant": ConstantRate(rate, duration_s=5),
        "poisson": Poisson(rate, duration_s=5, seed=seed),
        "gamma": Gamma(rate, 3.0, duration_s=5, seed=seed),
        "ramp": Ramp(rate, rate / 3, duration_s=5),
        "ramp_poisson": Ramp(0, rate, duration_s=5, seed=seed),
        "step": Step(((2.0, rate), (3.0, rate / 2))),
        "step_poisson": Step(((2.0, rate), (3.0, rate / 2)), seed=seed),
    }[kind]
    assert isinstance(shape, OpenLoopShape)
    t = times(shape)
    assert np.all(np.diff(t) >= 0) and (len(t) == 0 or (t[0] >= 0 and t[-1] < 5))


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=50), st.floats(0.01, 100))
def test_trace_scaling_keeps_order_and_ratio(offsets, speed):
    offsets = sorted(offsets)
    t = times(TraceScaled(offsets, speed=speed))
    assert list(t) == [o / speed for o in offsets]
    assert np.all(np.diff(t) >= 0)


def test_fixed_concurrency_is_closed_loop():
    shape = FixedConcurrency(4, duration_s=10)
    assert not isinstance(shape, OpenLoopShape) and shape.users == 4
