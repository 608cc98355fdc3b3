"""The replicas of one target as one worker sends to them: `Replicas`.

A target that lists `endpoints` (replay/targets/config.py) is one model served by several
replicas. Each worker balances its own requests over them: every attempt goes to the replica with
the fewest of this worker's requests in flight, and among equals to the next one in turn after the
last chosen (so an idle fleet is used round-robin); a retry goes to another replica than the attempt
before it, where there is another (an overloaded or failing replica is passed over, as a load
balancer's retry policy would). That is what a least-connections load
balancer in front of the fleet would do, per worker: workers do not share their counts, so with W
workers the fleet sees W such balancers. A target with one base_url is one replica, index 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from shadowreplay.replay.clients.stream_client import StreamingClient
from shadowreplay.replay.schemas.results import StreamOutcome


class Replicas:
    """One StreamingClient per replica of a target, and this worker's requests in flight on each."""

    def __init__(self, clients: Sequence[StreamingClient]):
        if not clients:
            raise ValueError("a target has at least one replica")
        self.clients = list(clients)
        self.in_flight = [0] * len(self.clients)
        self._next = 0  # where the search for a least-loaded replica starts

    def pick(self, avoid: int | None = None) -> int:
        """The replica for the next attempt, other than `avoid` where there is another (see the module
        docstring); counted in flight until `release`."""
        count = len(self.clients)
        candidates = [i for i in range(count) if i != avoid] if count > 1 else [0]
        fewest = min(self.in_flight[i] for i in candidates)
        for step in range(count):
            index = (self._next + step) % count
            if index in candidates and self.in_flight[index] == fewest:
                self._next = (index + 1) % count
                self.in_flight[index] += 1
                return index
        raise AssertionError("a least-loaded replica always exists")

    def release(self, index: int) -> None:
        self.in_flight[index] -= 1

    async def send(self, body: dict, avoid: int | None = None) -> tuple[int, StreamOutcome]:
        """Send one attempt to the replica `pick` chooses (`avoid`: the one the attempt before went to);
        (its index, the outcome)."""
        index = self.pick(avoid)
        try:
            return index, await self.clients[index].send(body)
        finally:
            self.release(index)
