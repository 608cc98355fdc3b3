"""A target's replicas: `endpoints` in its file, and each worker's least-in-flight choice among them
(replay/clients/replicas.py)."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from shadowreplay.replay.clients.replicas import Replicas
from shadowreplay.replay.targets.config import TargetConfig, load_target
from tests.support.paths import REPO


def target(**fields) -> TargetConfig:
    return TargetConfig(**{"name": "t", "kind": "openai", "model": "m", **fields})


def test_endpoints_are_the_replicas_and_base_url_reads_the_first():
    config = target(endpoints=["http://127.0.0.1:8001/v1/", "http://127.0.0.1:8002/v1"])
    assert config.replica_urls == ["http://127.0.0.1:8001/v1", "http://127.0.0.1:8002/v1"]
    assert config.base_url == "http://127.0.0.1:8001/v1"
    assert TargetConfig(**config.public_dict()).replica_urls == config.replica_urls  # a manifest's copy reads back
    assert target(base_url="http://127.0.0.1:8001/v1").replica_urls == ["http://127.0.0.1:8001/v1"]


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"endpoints": []}, "at least one URL"),
        ({"endpoints": ["http://a/v1", "http://a/v1/"]}, "lists a URL twice"),
        ({"endpoints": ["ftp://a"]}, "must start with http"),
        ({"endpoints": ["http://a/v1"], "base_url": "http://b/v1"}, "base_url or endpoints, not both"),
        ({"kind": "vllm", "endpoints": ["http://a/v1"], "vllm": {"model": "m"}}, "kind vllm starts its own"),
        ({}, "needs base_url (or endpoints"),
    ],
)
def test_endpoints_that_cannot_be_replicas_are_refused(fields, says):
    with pytest.raises(ValidationError, match=re.escape(says)):
        target(**fields)


def test_each_attempt_goes_to_the_replica_with_fewest_in_flight_then_round_robin():
    replicas = Replicas([object(), object(), object()])  # clients: not called here
    assert [replicas.pick() for _ in range(3)] == [0, 1, 2], "an idle fleet is used in turn"
    assert replicas.in_flight == [1, 1, 1]
    replicas.release(1)
    assert replicas.pick() == 1, "the one with fewest in flight, wherever the turn is"
    replicas.release(0)
    replicas.release(2)
    assert [replicas.pick(), replicas.pick()] == [2, 0], "among equals, the next after the last chosen"
    assert replicas.in_flight == [1, 1, 1]
    assert replicas.pick(avoid=1) == 2, "a retry goes elsewhere, even past the turn"
    assert replicas.pick(avoid=0) == 1 and Replicas([object()]).pick(avoid=0) == 0  # one replica: that one
    with pytest.raises(ValueError, match="at least one replica"):
        Replicas([])


def test_the_bundled_fleet_example_loads_as_two_replicas():
    fleet = load_target(REPO / "configs" / "targets" / "vllm-fleet.example.yaml")
    assert len(fleet.replica_urls) == 2 and fleet.base_url == fleet.replica_urls[0]
