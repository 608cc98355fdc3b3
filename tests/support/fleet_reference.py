"""A plain request-by-request simulation of a fleet, the reference the fleet simulation
(analysis/capacity/fleet_simulation.py) is checked against: every request, from an empty fleet, routed
to the replica with the fewest in flight (ties: the one whose count changed longest ago), each replica
`slots` slots first come first served. No fast path, nothing shared with the code under test."""

from __future__ import annotations

import heapq

import numpy as np


def plain_fleet(arrivals: np.ndarray, service: np.ndarray, replicas: int, slots: int) -> np.ndarray:
    """Every request simulated from an empty fleet (no fast path): the reference."""
    free = [[0.0] * slots for _ in range(replicas)]
    counts = [0] * replicas
    changed = list(range(replicas))
    tick = replicas
    departures: list[tuple[float, int]] = []
    waits = np.zeros(len(arrivals))
    for i, (now, took) in enumerate(zip(arrivals, service, strict=True)):
        while departures and departures[0][0] <= now:
            _, r = heapq.heappop(departures)
            counts[r] -= 1
            tick += 1
            changed[r] = tick
        r = min(range(replicas), key=lambda r: (counts[r], changed[r]))
        begin = max(free[r][0], now)
        heapq.heapreplace(free[r], begin + took)
        heapq.heappush(departures, (begin + took, r))
        counts[r] += 1
        tick += 1
        changed[r] = tick
        waits[i] = begin - now
    return waits
