"""The fleet simulation: N replicas fed by the log's own arrivals at the planned volume, each replica
calibrated from its sweep, predicting the latency percentiles a replay would measure.

Definitions (`DEFINITIONS` carries them into plan.json):
- A replica is `slots` requests served at once, first come first served, each request taking its own
  service time (send to last token, e2e) with its first token `ttft` into it; a request that finds its
  replica's slots busy waits for the first to free. This is exactly a server of k slots with fixed
  service times, and what a continuous-batching server (vLLM) is to first order: a batch of
  `max_num_seqs` sequences whose members' latency does not grow with the batch. A real one's does
  (TPOT rises with the batch), so below saturation the model reads latency low, more so the fuller
  the batch; `--verify` measures how far (docs/DESIGN.md "Capacity plan").
- Calibration (`ReplicaService.from_sweep`): the service times are the per-request TTFT and e2e of the
  sweep's points that held (met the SLOs without saturating; else its lightest point), from the
  requests that found fewer than `slots` of their point's requests in flight when sent (those that
  did not queue): so a batching server's service times include the slowdown of the loads it held.
  slots = round(saturation rate x mean service time) (Little's law at saturation: a full replica
  serves slots / service time requests a second), where the saturation rate is the highest achieved
  rate of any point. Service times and slots are found together (slots from all the rows, then from
  the unqueued ones, until slots no longer changes). Where no point saturated, slots is a lower bound
  and the prediction errs high (the plan notes it).
- Routing: each request goes to the replica with the fewest requests in flight (served or waiting),
  ties to the one whose count changed longest ago: the client's least-in-flight rule with one worker
  (replay/clients/replicas.py; several workers each route by their own counts).
- Service draws: every simulated request takes the service times of one calibration request drawn at
  random (seeded: every fleet size sees the same draws, so fleets differ by their size alone).
- Predicted per request: TTFT = wait + its TTFT, e2e = wait + its e2e, TPOT = its TPOT (a slot's pace
  does not depend on the queue); percentiles with linear interpolation, as the report's.
- Cost: the stretches where fewer requests are in flight than the fleet has slots cannot queue, and
  are found for all requests at once (numpy: every request's count in flight if none waited); only the
  stretches where the fleet is full are simulated request by request (compiled with numba:
  analysis/capacity/fleet_queue.py). 10M requests on 92 replicas: one fleet in 0.1-2.5 s.
- Search (`smallest_fleet`): from the fewest replicas whose slots keep up with the mean load, steps
  doubling up (or down) until the answer is bracketed, then bisection. A probe below the answer stops
  once an SLO is certainly missed (`StopRule`: more requests beyond the threshold than the
  percentile allows), so an overloaded fleet costs little; the answer is the full simulation's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shadowreplay.analysis.metrics.slo import Slo
from shadowreplay.errors import UserError

PREDICTED_METRICS = ("ttft", "tpot", "e2e")  # what the model predicts; an SLO on another is not judged
SAME_AS = {"sched_ttft": "ttft", "sched_e2e": "e2e"}  # equal to these for a client that sends on time
PERCENTILES = (50.0, 95.0, 99.0)
SEED = 0xF1EE7
MAX_SEARCH_REPLICAS = 100_000
KEPT_WAITS = 3  # search probes whose waits are kept for the predictions

DEFINITIONS = {
    "fleet_model": "each replica serves `slots` requests at once, first come first served, each with the service "
    "times (TTFT, e2e) of a calibration request drawn at random; a request waits when its replica's slots are "
    "busy; routed to the replica with the fewest in flight",
    "calibration": "service times: the requests that did not queue of the sweep's points that held (else of its "
    "lightest point); slots = round(saturation rate x mean e2e), the saturation rate the highest achieved rate of "
    "any point",
    "predicted": "TTFT = wait + service TTFT, e2e = wait + service e2e, TPOT = service TPOT; linear percentiles",
}


@dataclass(frozen=True)
class ReplicaService:
    """One replica's service, calibrated from a sweep (module docstring); times in seconds."""

    sweep: str
    slots: int
    ttft_s: np.ndarray = field(repr=False)  # one per calibration request
    e2e_s: np.ndarray = field(repr=False)
    tpot_s: np.ndarray = field(repr=False)  # NaN where a request had one token
    calibration_points: int  # the sweep's points the service times come from
    calibration_rps: float  # the highest offered rate among them
    saturation_rps: float
    saturated: bool  # some point saturated: slots is measured, not a lower bound

    @property
    def mean_service_s(self) -> float:
        return float(self.e2e_s.mean())

    @property
    def capacity_rps(self) -> float:
        """What a full replica serves a second: slots / mean service time."""
        return self.slots / self.mean_service_s

    def json_dict(self) -> dict:
        return {
            "sweep": self.sweep,
            "slots": self.slots,
            "calibration_requests": len(self.e2e_s),
            "calibration_points": self.calibration_points,
            "calibration_rps": self.calibration_rps,
            "saturation_rps": self.saturation_rps,
            "saturated": self.saturated,
            "mean_service_s": self.mean_service_s,
            "service_ttft_p50_ms": float(np.median(self.ttft_s)) * 1000.0,
            "service_e2e_p50_ms": float(np.median(self.e2e_s)) * 1000.0,
            "capacity_rps": self.capacity_rps,
        }

    @classmethod
    def from_sweep(cls, sweep_dir: str | Path) -> ReplicaService:
        """The service of the sweep at `sweep_dir`'s target (module docstring: calibration)."""
        import polars as pl

        from shadowreplay.analysis.data.run_data import load_run
        from shadowreplay.analysis.data.sweep_data import read_sweep
        from shadowreplay.analysis.metrics.table import tpot_ms

        directory = Path(sweep_dir)
        _, curve = read_sweep(directory)
        used = curve.filter(~pl.col("outlier") & pl.col("offered_rps").is_not_null())
        achieved = used.get_column("achieved_rps").drop_nulls()
        if used.height == 0 or achieved.len() == 0:
            raise UserError(f"{directory}: the sweep has no open-loop point to calibrate a replica from")
        saturation_rps = float(achieved.max())  # type: ignore[arg-type]
        held = used.filter(pl.col("saturation").is_null() & pl.col("slo_met").fill_null(True))
        chosen = held if held.height else used.sort("offered_rps").head(1)
        columns = ("sent_s", "done_s", "ttft_ms", "e2e_ms", "completion_tokens", "client_tokens", "status")
        parts = []
        for point in chosen.iter_rows(named=True):
            run = load_run(directory / point["run_dir"], columns=columns)
            rows = (
                run.final_scan.filter(pl.col("status") == "ok")
                .select("sent_s", "done_s", "ttft_ms", "e2e_ms", tpot_ms())
                .drop_nulls(["sent_s", "done_s", "ttft_ms", "e2e_ms"])
                .sort("sent_s")
                .collect()
            )
            sent, done = rows.get_column("sent_s").to_numpy(), rows.get_column("done_s").to_numpy()
            # in flight at the replica when each was sent: the point's earlier requests not yet done
            parts.append(rows.with_columns(pl.Series("in_flight", unqueued_in_flight(sent, done - sent))))
        rows = pl.concat(parts)
        if rows.height == 0:
            raise UserError(f"{directory}: the sweep's points {', '.join(chosen['run_dir'])} have no ok request")
        in_flight = rows.get_column("in_flight").to_numpy()
        ttft = rows.get_column("ttft_ms").to_numpy() / 1000.0
        e2e = rows.get_column("e2e_ms").to_numpy() / 1000.0
        tpot = rows.get_column("tpot_ms").cast(pl.Float64).fill_null(np.nan).to_numpy() / 1000.0
        unqueued = np.ones(len(e2e), dtype=bool)
        slots = 0
        for _ in range(10):  # slots from the requests that did not queue, until it settles
            found = max(1, round(saturation_rps * float(e2e[unqueued].mean())))
            if found == slots:
                break
            slots = found
            unqueued = in_flight < slots
        saturated = bool(used.get_column("saturation").is_not_null().any())  # a point's reason, null when none
        return cls(
            sweep=str(directory),
            slots=slots,
            ttft_s=ttft[unqueued],
            e2e_s=np.maximum(e2e[unqueued], 1e-9),
            tpot_s=tpot[unqueued],
            calibration_points=chosen.height,
            calibration_rps=float(chosen.get_column("offered_rps").max()),  # type: ignore[arg-type]
            saturation_rps=saturation_rps,
            saturated=saturated,
        )


def unqueued_in_flight(arrivals_s: np.ndarray, service_s: np.ndarray) -> np.ndarray:
    """Per request, how many earlier requests are still in flight when it arrives if nobody waits (the
    same for every fleet size: `fleet_waits` takes it to size several fleets on one arrival process)."""
    done = np.sort(arrivals_s + service_s)
    return np.arange(len(arrivals_s)) - np.searchsorted(done, arrivals_s, side="right")


@dataclass
class StopRule:
    """When a fleet's simulation may stop: its SLOs are certainly missed. Per SLO, each request's slack
    (s: the wait it can take and still be within the threshold; negative where its service alone misses
    it) as a row of `slacks`, and the most requests that may miss while the percentile stays within
    (`misses_allowed`); `misses` counts them (those that miss with no wait first)."""

    slacks: np.ndarray  # (SLOs, requests)
    misses_allowed: np.ndarray  # (SLOs,)
    misses: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.misses = (self.slacks < 0).sum(axis=1).astype(np.int64)

    def missed(self) -> bool:
        return bool((self.misses > self.misses_allowed).any())


def fleet_waits(
    arrivals_s: np.ndarray,
    service_s: np.ndarray,
    replicas: int,
    slots: int,
    in_flight: np.ndarray | None = None,
    stop: StopRule | None = None,
) -> np.ndarray | None:
    """Each request's wait (s) in a fleet of `replicas` x `slots` (module docstring). `arrivals_s` sorted;
    `in_flight`: their `unqueued_in_flight`, where already known. With `stop`, None as soon as its SLOs
    are certainly missed (an overloaded fleet is judged without simulating all of its queue)."""
    n = len(arrivals_s)
    waits = np.zeros(n)
    if n == 0:
        return waits
    if stop is not None and stop.missed():
        return None
    capacity = replicas * slots
    undelayed_done = arrivals_s + service_s
    if in_flight is None:
        in_flight = unqueued_in_flight(arrivals_s, service_s)
    full = np.flatnonzero(in_flight >= capacity)
    if len(full) == 0:
        return waits
    from shadowreplay.analysis.capacity.fleet_queue import queued_waits  # numba: imported where it is needed

    slacks = stop.slacks if stop is not None else np.empty((0, n))
    misses = stop.misses if stop is not None else np.zeros(0, dtype=np.int64)
    allowed = stop.misses_allowed if stop is not None else np.zeros(0, dtype=np.int64)
    longest = float(service_s.max())
    stopped = queued_waits(
        arrivals_s, service_s, undelayed_done, full, replicas, slots, longest, waits, slacks, misses, allowed
    )
    return None if stopped else waits


@dataclass(frozen=True)
class FleetPrediction:
    """The predicted latency percentiles of `replicas` replicas, and whether each SLO is met."""

    replicas: int
    requests: int
    queued_fraction: float  # of requests that waited for a slot
    percentiles_ms: dict[str, dict[str, float | None]]  # metric -> "p95" -> ms
    slos_met: dict[str, bool]  # SLO text -> met (the SLOs the model predicts)

    @property
    def meets(self) -> bool:
        return all(self.slos_met.values())

    def json_dict(self) -> dict:
        return {
            "replicas": self.replicas,
            "requests": self.requests,
            "queued_fraction": self.queued_fraction,
            "percentiles_ms": self.percentiles_ms,
            "slos_met": self.slos_met,
            "meets_slos": self.meets,
        }


def _percentiles_ms(seconds: np.ndarray, wanted: list[float]) -> dict[str, float | None]:
    """The `wanted` percentiles (linear, as the report's) of values in seconds, in ms, keyed `p95`."""
    if not len(seconds):
        return {f"p{p:g}": None for p in wanted}
    picked = np.percentile(seconds, wanted) * 1000.0
    return {f"p{p:g}": float(v) for p, v in zip(wanted, picked, strict=True)}


def predicted_metric(slo: Slo) -> str | None:
    """The predicted metric an SLO is judged on, None where the model does not predict it (itl)."""
    name = SAME_AS.get(slo.metric, slo.metric)
    return name if name in PREDICTED_METRICS else None


class FleetSimulator:
    """Fleets of one replica service fed by one arrival process (module docstring)."""

    def __init__(self, service: ReplicaService, arrivals_s: np.ndarray, slos: Sequence[Slo], seed: int = SEED):
        order = np.argsort(arrivals_s, kind="stable")
        self.arrivals_s = np.asarray(arrivals_s, dtype=float)[order]
        self.service = service
        self.slos = tuple(slos)
        draws = np.random.default_rng(seed).integers(len(service.e2e_s), size=len(self.arrivals_s))
        self._e2e = service.e2e_s[draws]
        self._ttft = service.ttft_s[draws]
        self._tpot = service.tpot_s[draws]
        self.unpredicted = sorted({str(slo) for slo in self.slos if predicted_metric(slo) is None})
        self._in_flight: dict[float, np.ndarray] = {}  # by rate factor: the same for every fleet size
        self._made: dict[tuple[int, float], FleetPrediction] = {}
        self._slacks: tuple[np.ndarray, np.ndarray] | None = None  # the stop rule's, made once
        self._tpot_ms: dict[str, float | None] | None = None
        self._kept: dict[tuple[int, float], np.ndarray] = {}  # the last probes' waits, by fleet and rate factor
        self._unqueued_met: dict[Slo, bool] = {}  # each SLO met by the service alone (_met_without_wait)

    def predict(self, replicas: int, rate_factor: float = 1.0) -> FleetPrediction:
        """`replicas` replicas on the arrivals, their rate `rate_factor` times as high (headroom)."""
        if replicas < 1:
            raise ValueError("a fleet has at least one replica")
        made = self._made.get((replicas, rate_factor))
        if made is not None:
            return made
        waits = self._kept.pop((replicas, rate_factor), None)  # a search probe's, where it ran to the end
        if waits is None:
            waits = self._waits(replicas, rate_factor)
        assert waits is not None, "without a stop rule the fleet is simulated to the end"
        return self._predicted(replicas, rate_factor, waits)

    def _waits(self, replicas: int, rate_factor: float, stop: StopRule | None = None) -> np.ndarray | None:
        arrivals = self.arrivals_s / rate_factor if rate_factor != 1.0 else self.arrivals_s
        if rate_factor not in self._in_flight:
            self._in_flight[rate_factor] = unqueued_in_flight(arrivals, self._e2e)
        return fleet_waits(arrivals, self._e2e, replicas, self.service.slots, self._in_flight[rate_factor], stop)

    def _predicted(self, replicas: int, rate_factor: float, waits: np.ndarray) -> FleetPrediction:
        """The prediction of a fleet whose requests waited `waits` (kept for the next ask)."""
        wanted = sorted({*PERCENTILES, *(slo.percentile for slo in self.slos)})
        percentiles: dict[str, dict[str, float | None]] = {
            "ttft": _percentiles_ms(waits + self._ttft, wanted),
            "e2e": _percentiles_ms(waits + self._e2e, wanted),
            "tpot": self._tpot_percentiles(wanted),  # a slot's pace: the same for every fleet
        }
        met: dict[str, bool] = {}
        for slo in self.slos:
            judged = predicted_metric(slo)
            if judged is None:
                continue
            value = percentiles[judged][f"p{slo.percentile:g}"]
            met[str(slo)] = value is not None and value <= slo.threshold_ms
        queued = float((waits > 0).mean()) if len(waits) else 0.0
        self._made[(replicas, rate_factor)] = made = FleetPrediction(replicas, len(waits), queued, percentiles, met)
        return made

    def _tpot_percentiles(self, wanted: list[float]) -> dict[str, float | None]:
        if self._tpot_ms is None:
            self._tpot_ms = _percentiles_ms(self._tpot[np.isfinite(self._tpot)], wanted)
        return self._tpot_ms

    def _stop_rule(self) -> StopRule:
        """The SLOs as a StopRule: per queueing SLO (TTFT, e2e) the slack of each request, and the misses
        its linear percentile allows (more than n - 1 - floor((n - 1) p / 100) misses put the value at that
        rank, and so the percentile, above the threshold)."""
        n = len(self.arrivals_s)
        if self._slacks is None:
            slacks, allowed = [], []
            for slo in self.slos:
                metric = predicted_metric(slo)
                if metric not in ("ttft", "e2e"):
                    continue
                service = self._ttft if metric == "ttft" else self._e2e
                slacks.append(slo.threshold_ms / 1000.0 - service)
                allowed.append(n - 1 - math.floor((n - 1) * slo.percentile / 100.0))
            rows = np.array(slacks) if slacks else np.empty((0, n))
            self._slacks = (rows, np.array(allowed, dtype=np.int64))
        return StopRule(*self._slacks)  # its own count of misses: one rule per run

    def least_replicas(self, rate_factor: float = 1.0) -> int:
        """The fewest replicas whose slots keep up with the mean load: ceil(mean rate x mean service time /
        slots), at least 1 (a fleet below it falls behind over the log; over a short log it may still meet
        its SLOs, which the search finds: it is only where the search starts)."""
        n = len(self.arrivals_s)
        span = float(self.arrivals_s[-1] - self.arrivals_s[0]) if n > 1 else 0.0
        if span <= 0:
            return 1
        load = (n - 1) / span * rate_factor * float(self._e2e.mean())
        return max(1, math.ceil(load / self.service.slots))

    def meets(self, replicas: int, rate_factor: float = 1.0) -> bool:
        """Whether `replicas` replicas meet every predicted SLO: the prediction's answer, found without
        simulating all of an overloaded fleet's queue (it stops once an SLO is certainly missed)."""
        made = self._made.get((replicas, rate_factor))
        if made is not None:
            return made.meets
        if any(not self._met_without_wait(slo) for slo in self.slos):
            return False  # a TPOT SLO, or a service that misses alone: no fleet size helps
        waits = self._waits(replicas, rate_factor, self._stop_rule())
        if waits is None:
            return False
        if len(self._kept) >= KEPT_WAITS:
            self._kept.pop(next(iter(self._kept)))
        self._kept[(replicas, rate_factor)] = waits  # the plan predicts N and N + 1, probed on the way
        return all(self._slo_met(slo, waits) for slo in self.slos)  # it ran to the end: the SLOs themselves

    def _slo_met(self, slo: Slo, waits: np.ndarray) -> bool:
        metric = predicted_metric(slo)
        if metric is None:
            return True
        if metric == "tpot":
            return self._met_without_wait(slo)
        values = waits + (self._ttft if metric == "ttft" else self._e2e)
        return float(np.percentile(values, slo.percentile)) * 1000.0 <= slo.threshold_ms

    def _met_without_wait(self, slo: Slo) -> bool:
        """Whether the service alone meets `slo` (no wait): the same for every probe, so found once."""
        if slo not in self._unqueued_met:
            metric = predicted_metric(slo)
            met = True
            if metric is not None:
                values = {"ttft": self._ttft, "e2e": self._e2e, "tpot": self._tpot}[metric]
                finite = values[np.isfinite(values)]
                met = not len(finite) or float(np.percentile(finite, slo.percentile)) * 1000.0 <= slo.threshold_ms
            self._unqueued_met[slo] = met
        return self._unqueued_met[slo]

    def smallest_fleet(self, start: int | None = None, rate_factor: float = 1.0) -> int:
        """The fewest replicas that meet every predicted SLO: from `start` (default: `least_replicas`), steps
        doubling down (or up) until the answer is bracketed, then bisection. A probe below the answer
        stops early (its SLO certainly missed), one above it runs to the end: so the search starts low."""
        if start is None:
            start = self.least_replicas(rate_factor)
        if not all(self._met_without_wait(slo) for slo in self.slos):
            raise UserError("the simulated replica's service alone misses an SLO: no fleet size meets it")
        replicas = max(1, start)
        if self.meets(replicas, rate_factor):
            high, step, low = replicas, 1, 0
            while high > 1:
                probe = max(1, high - step)
                if not self.meets(probe, rate_factor):
                    low = probe
                    break
                high, step = probe, step * 2
            if low == 0:
                return high
        else:
            low, step = replicas, 1
            high = low + step
            while not self.meets(high, rate_factor):
                if high >= MAX_SEARCH_REPLICAS:
                    raise UserError(
                        f"no fleet of up to {MAX_SEARCH_REPLICAS:,} replicas meets the SLOs in the simulation"
                    )
                low, step = high, step * 2
                high = low + step
        while high - low > 1:
            middle = (low + high) // 2
            if self.meets(middle, rate_factor):
                high = middle
            else:
                low = middle
        return high
