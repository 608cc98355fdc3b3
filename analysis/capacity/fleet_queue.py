"""The request-by-request part of the fleet simulation (analysis/capacity/fleet_simulation.py): one
stretch during which the fleet is full, compiled with numba, since a month of traffic on a fleet sized
near its load spends millions of requests in such stretches (pure Python took minutes where this
takes seconds).

`queued_stretch` starts at request `first`, when every slot is busy and nobody waits: the requests in
flight then (those before `first` not yet done, none of which waited) are dealt to the replicas in
arrival order. Each following request goes to the replica with the fewest requests in flight (served
or waiting; ties to the one whose count changed longest ago), and starts on that replica's slot that
frees first, at once or when it frees (each replica serves first come first served). The stretch ends
at the first request arriving after every request that waited is done (from there on nobody waits
until the fleet is full again), or early once a stop rule's SLO is certainly missed: per SLO `j`, a
request with a slack `0 <= slacks[j, i] < wait` misses it, and more than `allowed[j]` misses (counted
on from `misses[j]`) miss the SLO. Returns (the next request, whether it stopped early).
"""

from __future__ import annotations

import heapq

import numpy as np
from numba import njit


@njit(cache=True)
def queued_stretch(  # noqa: PLR0913 - the arrays of one simulation, passed to compiled code as they are
    arrivals: np.ndarray,
    service: np.ndarray,
    undelayed_done: np.ndarray,
    first: int,
    replicas: int,
    slots: int,
    longest: float,
    waits: np.ndarray,
    slacks: np.ndarray,  # (SLOs, requests); zero rows: no stop rule
    misses: np.ndarray,  # (SLOs,), updated
    allowed: np.ndarray,  # (SLOs,)
) -> tuple[int, bool]:
    n = len(arrivals)
    start_t = arrivals[first]
    low = np.searchsorted(arrivals, start_t - longest)
    slot_free = np.full((replicas, slots), start_t)
    counts = np.zeros(replicas, dtype=np.int64)
    changed = np.arange(replicas)  # when each replica's count last changed
    departures = [(0.0, 0)]  # (done, replica); typed by its first entry
    departures.pop()
    dealt = 0
    for j in range(low, first):
        if undelayed_done[j] > start_t:
            replica = dealt % replicas
            if counts[replica] < slots:
                slot_free[replica, counts[replica]] = undelayed_done[j]
            counts[replica] += 1
            heapq.heappush(departures, (undelayed_done[j], replica))
            dealt += 1
    tick = replicas
    last_waiter_done = -np.inf
    for i in range(first, n):
        now = arrivals[i]
        if i > first and last_waiter_done <= now:
            return i, False
        while len(departures) and departures[0][0] <= now:
            _, gone = heapq.heappop(departures)
            counts[gone] -= 1
            tick += 1
            changed[gone] = tick
        chosen = 0
        for replica in range(1, replicas):
            if counts[replica] < counts[chosen] or (
                counts[replica] == counts[chosen] and changed[replica] < changed[chosen]
            ):
                chosen = replica
        slot = 0
        for k in range(1, slots):
            if slot_free[chosen, k] < slot_free[chosen, slot]:
                slot = k
        free = slot_free[chosen, slot]
        begin = free if free > now else now
        done = begin + service[i]
        slot_free[chosen, slot] = done
        heapq.heappush(departures, (done, chosen))
        counts[chosen] += 1
        tick += 1
        changed[chosen] = tick
        if begin > now:
            wait = begin - now
            waits[i] = wait
            if done > last_waiter_done:
                last_waiter_done = done
            for j in range(slacks.shape[0]):
                if 0.0 <= slacks[j, i] < wait:
                    misses[j] += 1
                    if misses[j] > allowed[j]:
                        return i, True
    return n, False


@njit(cache=True)
def queued_waits(  # noqa: PLR0913
    arrivals: np.ndarray,
    service: np.ndarray,
    undelayed_done: np.ndarray,
    full: np.ndarray,  # the requests that arrive with every slot busy if nobody waited, sorted
    replicas: int,
    slots: int,
    longest: float,
    waits: np.ndarray,
    slacks: np.ndarray,
    misses: np.ndarray,
    allowed: np.ndarray,
) -> bool:
    """Every stretch in turn, each from the first full request at or after the previous one's end, in one
    compiled call (a stretch can be a few requests, and a month of traffic has hundreds of thousands of
    them); True where the stop rule stopped it."""
    index = 0
    while index < len(full):
        position, stopped = queued_stretch(
            arrivals, service, undelayed_done, full[index], replicas, slots, longest, waits, slacks, misses, allowed
        )
        if stopped:
            return True
        while index < len(full) and full[index] < position:
            index += 1
    return False
