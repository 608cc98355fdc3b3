"""Load shapes: small typed classes, each with one method that yields send times.

Open-loop shapes (`OpenLoopShape`) yield send times in seconds from the run's start, non-decreasing,
and end at their bound: `duration_s` and/or `count` for the endless ones (constant, Poisson, gamma),
their own length for steps, ramps and traces. The closed-loop shape (`FixedConcurrency`) has no send
times, since a user sends its next request when the previous one is done: the runner recognises it by
type and keeps `users` requests in flight. Replay and sweeps use the same shapes; `TraceScaled` is the
traffic log's own arrival times, compressed or stretched; `TracePattern` is its arrival pattern at a
chosen mean rate for a chosen time (a sweep's `--shape trace` load point).

Every shape is deterministic: regular shapes by construction, random ones per `seed`. Steps and
ramps are defined by their rate over time; their i-th send is where the integral of the rate reaches
i (regular) or the i-th point of a unit-rate Poisson process (`seed` given: Poisson arrivals whose
rate follows the steps or the ramp, by the time-rescaling theorem).

The structure follows GuideLLM's scheduler strategies (one strategy, one way to time requests;
closed loop kept apart from open loop); the code is this project's own.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np

from shadowreplay.errors import ShadowReplayError

_DRAW_BLOCK = 4096  # random gaps are drawn this many at a time (fixed, so a seed gives one sequence)


@runtime_checkable
class OpenLoopShape(Protocol):
    """A shape whose sends do not wait for answers: `send_times()` yields when each request goes."""

    def send_times(self) -> Iterator[float]: ...


class ShapeError(ShadowReplayError, ValueError):
    """A load shape's parameters that describe no load (the message names the shape and the field)."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ShapeError(message)


def _check_bounds(shape: str, duration_s: float | None, count: int | None, required: bool) -> None:
    if required:
        _require(duration_s is not None or count is not None, f"{shape}: needs a duration_s or a count bound")
    _require(duration_s is None or duration_s > 0, f"{shape}: duration_s must be positive, got {duration_s}")
    _require(count is None or count >= 0, f"{shape}: count must be zero or more, got {count}")


def _bounded(times: Iterator[float], duration_s: float | None, count: int | None) -> Iterator[float]:
    """The times before `duration_s`, at most `count` of them."""
    for i, t in enumerate(times):
        if (count is not None and i >= count) or (duration_s is not None and t >= duration_s):
            return
        yield t


def _gamma_arrivals(rate: float, shape: float, seed: int) -> Iterator[float]:
    """Endless arrival times whose gaps are gamma(shape, scale) with mean 1/rate."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / (rate * shape)
    t = 0.0
    while True:
        for gap in rng.gamma(shape, scale, size=_DRAW_BLOCK).tolist():
            t += gap
            yield t


def _unit_events(seed: int | None) -> Iterator[float]:
    """Points on the integrated-rate axis: 0, 1, 2, ... or, with a seed, a unit-rate Poisson process."""
    if seed is None:
        yield from map(float, itertools.count())
    else:
        yield from _gamma_arrivals(1.0, 1.0, seed)


@dataclass(frozen=True)
class ConstantRate:
    """One request every 1/rate seconds, from t = 0."""

    rate: float
    duration_s: float | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        _require(self.rate > 0, f"ConstantRate: rate must be positive, got {self.rate}")
        _check_bounds("ConstantRate", self.duration_s, self.count, required=True)

    def send_times(self) -> Iterator[float]:
        return _bounded((i / self.rate for i in itertools.count()), self.duration_s, self.count)


@dataclass(frozen=True)
class Gamma:
    """Gaps drawn from a gamma distribution with mean 1/rate and squared coefficient of variation
    `burstiness` (1: Poisson; above 1: burstier; below 1: more regular).

    vLLM's `bench serve --burstiness` is the gamma *shape*, the reciprocal of this: its 0.5 is our 2.
    """

    rate: float
    burstiness: float = 1.0
    duration_s: float | None = None
    count: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.rate > 0, f"Gamma: rate must be positive, got {self.rate}")
        _require(self.burstiness > 0, f"Gamma: burstiness must be positive, got {self.burstiness}")
        _check_bounds("Gamma", self.duration_s, self.count, required=True)

    def send_times(self) -> Iterator[float]:
        return _bounded(_gamma_arrivals(self.rate, 1.0 / self.burstiness, self.seed), self.duration_s, self.count)


@dataclass(frozen=True)
class Poisson:
    """Exponential gaps with mean 1/rate (a Poisson process: gamma with burstiness 1)."""

    rate: float
    duration_s: float | None = None
    count: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.rate > 0, f"Poisson: rate must be positive, got {self.rate}")
        _check_bounds("Poisson", self.duration_s, self.count, required=True)

    def send_times(self) -> Iterator[float]:
        return Gamma(self.rate, 1.0, self.duration_s, self.count, self.seed).send_times()


@dataclass(frozen=True)
class Step:
    """A rate held in stages: `stages` is a sequence of (duration_s, rate); a rate of 0 is a pause.

    Regular sends within each stage by default (each stage starts with a send); with a `seed`,
    Poisson arrivals at each stage's rate.
    """

    stages: tuple[tuple[float, float], ...]
    seed: int | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        _require(len(self.stages) > 0, "Step: needs at least one (duration_s, rate) stage")
        for i, (duration, rate) in enumerate(self.stages):
            _require(duration > 0, f"Step: stage {i}: duration_s must be positive, got {duration}")
            _require(rate >= 0, f"Step: stage {i}: rate must be zero or more, got {rate}")
        _check_bounds("Step", None, self.count, required=False)

    def send_times(self) -> Iterator[float]:
        return _bounded(self._times(), None, self.count)

    def _times(self) -> Iterator[float]:
        if self.seed is None:  # each stage restarts its own regular grid at its start
            start = 0.0
            for duration, rate in self.stages:
                if rate > 0:
                    yield from (start + t for t in ConstantRate(rate, duration_s=duration).send_times())
                start += duration
            return
        events = _unit_events(self.seed)
        u = next(events)
        start, integral = 0.0, 0.0  # stage start time, integrated rate at that time
        for duration, rate in self.stages:
            end_integral = integral + rate * duration
            while u < end_integral:
                yield start + (u - integral) / rate
                u = next(events)
            start, integral = start + duration, end_integral


@dataclass(frozen=True)
class Ramp:
    """Rate changing linearly from `from_rate` to `to_rate` over `duration_s` (either may be 0).

    Regular sends where the integral of the rate reaches 0, 1, 2, ... by default; with a `seed`,
    Poisson arrivals whose rate follows the ramp.
    """

    from_rate: float
    to_rate: float
    duration_s: float
    seed: int | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        _require(
            self.from_rate >= 0 and self.to_rate >= 0,
            f"Ramp: rates must be zero or more, got {self.from_rate}, {self.to_rate}",
        )
        _require(self.from_rate + self.to_rate > 0, "Ramp: from_rate and to_rate cannot both be 0")
        _check_bounds("Ramp", self.duration_s, self.count, required=True)

    def send_times(self) -> Iterator[float]:
        return _bounded(self._times(), None, self.count)

    def _times(self) -> Iterator[float]:
        r0, slope = self.from_rate, (self.to_rate - self.from_rate) / self.duration_s
        total = (self.from_rate + self.to_rate) / 2 * self.duration_s  # the integral over the ramp
        for u in _unit_events(self.seed):
            if u >= total:
                return
            # Solve r0 t + slope t^2 / 2 = u for t >= 0, in the form that is stable for any slope sign;
            # u < total keeps the discriminant at or above to_rate^2 >= 0.
            root = math.sqrt(max(r0 * r0 + 2.0 * slope * u, 0.0))
            t = 0.0 if u == 0 else 2.0 * u / (r0 + root)
            if t >= self.duration_s:  # rounding at the very end of the ramp
                return
            yield t


@dataclass(frozen=True)
class TraceScaled:
    """A traffic log's own arrival offsets (seconds after its first arrival), played `speed` times
    faster; or, with `target_rate`, scaled so that the mean rate over the trace is `target_rate`
    requests/s ((n - 1) / span). Scaling is exact: each time is the offset divided by the speed."""

    offsets_s: Sequence[float] | np.ndarray
    speed: float = 1.0
    target_rate: float | None = None

    def __post_init__(self) -> None:
        _require(self.speed > 0, f"TraceScaled: speed must be positive, got {self.speed}")
        _require(
            self.target_rate is None or self.target_rate > 0,
            f"TraceScaled: target_rate must be positive, got {self.target_rate}",
        )
        offsets = np.asarray(self.offsets_s, dtype=float)
        if len(offsets):
            _require(offsets[0] >= 0, f"TraceScaled: offset 0 is negative ({offsets[0]})")
            drops = np.flatnonzero(np.diff(offsets) < 0)
            if len(drops):
                raise ShapeError(
                    f"TraceScaled: offsets must be non-decreasing; offset {drops[0] + 1} goes back in time"
                )
        if self.target_rate is not None:
            _require(
                len(offsets) >= 2 and offsets[-1] > offsets[0],
                "TraceScaled: target_rate needs at least two distinct offsets",
            )

    @property
    def effective_speed(self) -> float:
        """The factor the offsets are divided by."""
        if self.target_rate is None:
            return self.speed
        offsets = self.offsets_s
        native_rate = (len(offsets) - 1) / (float(offsets[-1]) - float(offsets[0]))
        return self.target_rate / native_rate

    def send_times(self) -> Iterator[float]:
        speed = self.effective_speed
        for offset in self.offsets_s:
            yield float(offset) / speed


def at_speed(speed: float) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """A replay's send times for `--speed`: the selected rows' arrival offsets played `speed` times faster
    (TraceScaled), as the array a ReplayRequest takes, with the schedule's name for the manifest."""

    def send_times(offsets: np.ndarray) -> np.ndarray:
        return np.fromiter(TraceScaled(offsets, speed).send_times(), dtype=float, count=len(offsets))

    return send_times, f"TraceScaled(speed={speed:g})"


@dataclass(frozen=True, eq=False)
class TracePattern:
    """A traffic log's own arrival pattern (its gaps, so its bursts and lulls) at mean rate `rate`, for
    `duration_s`: the log's arrival offsets (seconds after its first arrival, non-decreasing) divided by
    `speed` = rate / the log's mean rate ((n - 1) / span), from the log's first arrival. Where the scaled
    log ends before `duration_s`, it plays again from its top, one mean gap after its last arrival, as
    often as needed. `rows()` says which of the log's arrivals each send replays (index into offsets_s),
    so a sweep's load point keeps each arrival's own request with it."""

    offsets_s: Sequence[float] | np.ndarray
    rate: float
    duration_s: float

    def __post_init__(self) -> None:
        _require(self.rate > 0, f"TracePattern: rate must be positive, got {self.rate}")
        _check_bounds("TracePattern", self.duration_s, None, required=True)
        offsets = np.asarray(self.offsets_s, dtype=float)
        _require(
            len(offsets) >= 2 and offsets[-1] > offsets[0],
            "TracePattern: the log needs at least two arrivals at different times",
        )
        _require(bool(np.all(np.diff(offsets) >= 0)), "TracePattern: offsets must be non-decreasing")

    @property
    def log_rate(self) -> float:
        """The log's mean arrival rate, (n - 1) / span, requests/s."""
        offsets = self.offsets_s
        return (len(offsets) - 1) / (float(offsets[-1]) - float(offsets[0]))

    @property
    def effective_speed(self) -> float:
        """The factor the log's time is compressed by (above 1: faster than recorded)."""
        return self.rate / self.log_rate

    def _schedule(self) -> tuple[np.ndarray, np.ndarray]:
        offsets = np.asarray(self.offsets_s, dtype=float)
        offsets = offsets - offsets[0]
        period = float(offsets[-1]) + 1.0 / self.log_rate  # one pass of the log, then one mean gap
        horizon = self.duration_s * self.effective_speed  # in the log's own time
        passes = math.ceil(horizon / period)
        times = (offsets[None, :] + period * np.arange(passes)[:, None]).ravel()
        rows = np.tile(np.arange(len(offsets)), passes)
        kept = times < horizon
        return times[kept] / self.effective_speed, rows[kept]

    def send_times(self) -> Iterator[float]:
        yield from self._schedule()[0].tolist()

    def rows(self) -> np.ndarray:
        """The index, in offsets_s, of the arrival each send replays."""
        return self._schedule()[1]


@dataclass(frozen=True)
class FixedConcurrency:
    """Closed loop: `users` requests always in flight, each user sending its next request when the
    previous one is done, for `duration_s` (or until the requests run out). It yields no send times:
    the runner recognises this type and drives it (RunSettings.concurrency)."""

    users: int
    duration_s: float | None = None

    def __post_init__(self) -> None:
        _require(self.users >= 1, f"FixedConcurrency: users must be at least 1, got {self.users}")
        _check_bounds("FixedConcurrency", self.duration_s, None, required=False)


LoadShape = ConstantRate | Poisson | Gamma | Step | Ramp | TraceScaled | TracePattern | FixedConcurrency


def shape_record(shape: LoadShape) -> dict[str, Any]:
    """A shape as a manifest records it: its kind and parameters, a trace's offsets by their count with
    the speed they were scaled by."""
    record: dict[str, Any] = {"kind": type(shape).__name__}
    for item in fields(shape):
        value = getattr(shape, item.name)
        if item.name == "offsets_s":
            record["log_arrivals"] = len(value)
        else:
            record[item.name] = value
    if isinstance(shape, TraceScaled | TracePattern):
        record["speed"] = shape.effective_speed
    return record
