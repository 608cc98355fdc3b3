"""Replicas of a `kind: vllm` target (replay/targets/vllm_replicas.py, replay/targets/config.py): the GPUs
one server uses from its own arguments, which GPUs or CPUs each replica gets, the config's refusals, the
server's environment, and how a replica's scraped telemetry is named."""

from __future__ import annotations

import pytest

from shadowreplay.errors import UserError
from shadowreplay.replay.schemas.telemetry import device_server, server_device
from shadowreplay.replay.targets.config import TargetConfig, load_target
from shadowreplay.replay.targets.vllm_replicas import ReplicaSlot, parallel_size, replica_slots, visible_gpus
from shadowreplay.replay.targets.vllm_server import VllmServer, free_ports
from tests.support.paths import REPO


def _vllm(**launch) -> TargetConfig:
    top = {key: launch.pop(key) for key in ("gpus_per_replica",) if key in launch}
    return TargetConfig.model_validate(
        {"name": "t", "kind": "vllm", "model": "m", "vllm": {"model": "/m", **launch}, **top}
    )


@pytest.mark.parametrize(
    ("args", "size"),
    [
        ([], 1),
        (["--tensor-parallel-size", "4"], 4),
        (["-tp", "2", "--pipeline-parallel-size=2"], 4),
        (["-tp", "2", "-dp", "2", "--max-model-len", "4096"], 4),
        (["-tp", "8", "--tensor-parallel-size", "2"], 2),  # the last one given, as argparse reads it
    ],
)
def test_one_server_uses_its_parallel_sizes_product_of_gpus(args, size):
    assert parallel_size(args) == size
    assert _vllm(args=args).replica_gpus == size


@pytest.mark.parametrize("args", [["-tp", "two"], ["--pipeline-parallel-size=0"], ["-tp"]])
def test_a_malformed_parallel_size_is_a_config_error(args):
    with pytest.raises(ValueError, match="positive whole number"):
        _vllm(args=args)


def test_gpus_per_replica_overrides_but_never_undercuts_the_parallel_size():
    assert _vllm(args=["-tp", "2"], gpus_per_replica=4).replica_gpus == 4
    with pytest.raises(ValueError, match="fewer than the 2 GPUs"):
        _vllm(args=["-tp", "2"], gpus_per_replica=1)
    assert TargetConfig(name="t", kind="openai", model="m", base_url="http://h/v1").replica_gpus == 1
    assert (
        TargetConfig(name="t", kind="openai", model="m", base_url="http://h/v1", gpus_per_replica=8).replica_gpus == 8
    )
    with pytest.raises(ValueError, match="hosted API"):
        TargetConfig(name="t", kind="anthropic", model="m", base_url="https://api.anthropic.com", gpus_per_replica=1)


def test_replicas_refuse_a_fixed_port_and_one_device_list_for_all():
    assert _vllm(replicas=3).replica_count == 3
    assert _vllm(port=8000).replica_count == 1
    with pytest.raises(ValueError, match="each replica gets a free port"):
        _vllm(replicas=2, port=8000)
    with pytest.raises(ValueError, match="each replica gets its own GPUs"):
        _vllm(replicas=2, env={"CUDA_VISIBLE_DEVICES": "0"})
    assert _vllm(env={"CUDA_VISIBLE_DEVICES": "3"}).replica_count == 1  # one server: the user's choice stands
    fleet = TargetConfig(name="t", kind="openai", model="m", endpoints=["http://a/v1", "http://b/v1"])
    assert fleet.replica_count == 2


def test_visible_gpus_follow_this_process_then_nvml():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 5"}, nvml_gpus=[{"index": 0}]) == ["2", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, nvml_gpus=[{"index": 0}]) == []  # set and empty: none
    assert visible_gpus({}, nvml_gpus=[{"index": 0}, {"index": 1}]) == ["0", "1"]
    assert visible_gpus({}, nvml_gpus=[]) == []


def test_each_replica_gets_its_own_gpus():
    slots = replica_slots("t", 2, 2, ["0", "1", "2", "3", "4"], server_cpus=[2, 3])
    assert [slot.gpus for slot in slots] == [("0", "1"), ("2", "3")]
    assert all(slot.cpus == (2, 3) and not slot.shared for slot in slots)
    uuids = replica_slots("t", 1, 1, ["GPU-aa", "GPU-bb"], server_cpus=None)
    assert uuids == [ReplicaSlot(0, ("GPU-aa",), None)]


def test_a_fleet_larger_than_the_host_is_refused_before_anything_starts():
    with pytest.raises(UserError, match=r"target big: 3 replica\(s\) x 2 GPU\(s\) need 6 GPUs; this host shows 4"):
        replica_slots("big", 3, 2, ["0", "1", "2", "3"], server_cpus=None)


def test_on_cpus_the_replicas_split_the_servers_cpus():
    assert [slot.cpus for slot in replica_slots("t", 2, 1, [], [4, 5, 6, 7, 8])] == [(4, 5, 6), (7, 8)]
    assert [slot.cpus for slot in replica_slots("t", 3, 1, [], [1, 2, 3])] == [(1,), (2,), (3,)]
    shared = replica_slots("t", 2, 1, [], [1])  # fewer CPUs than replicas: every replica on all of them
    assert [(slot.cpus, slot.shared) for slot in shared] == [((1,), True), ((1,), True)]
    assert replica_slots("t", 1, 1, [], [1]) == [ReplicaSlot(0, None, (1,))]
    assert [slot.cpus for slot in replica_slots("t", 2, 1, [], None)] == [None, None]


def test_a_server_sees_only_its_gpus_unless_its_env_says_otherwise():
    server = VllmServer(model="/m", python="/usr/bin/python3", gpus=["2", "3"])
    assert server.explicit_env()["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert "CUDA_VISIBLE_DEVICES" not in VllmServer(model="/m", python="/usr/bin/python3").explicit_env()
    told = VllmServer(model="/m", python="/usr/bin/python3", gpus=["0"], env={"CUDA_VISIBLE_DEVICES": "7"})
    assert told.explicit_env()["CUDA_VISIBLE_DEVICES"] == "7"


def test_a_server_given_gpus_counts_them_in_nvml_s_order_unless_the_user_chose_one(monkeypatch):
    """CUDA numbers GPUs fastest first; in PCI bus order its indices are NVML's (the telemetry's devices)."""
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    server = VllmServer(model="/m", python="/usr/bin/python3", gpus=["2", "3"])
    assert server.explicit_env()["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert server.identity()["cuda_device_order"] == "PCI_BUS_ID" and server.identity()["gpus"] == "2,3"
    assert "CUDA_DEVICE_ORDER" not in VllmServer(model="/m", python="/usr/bin/python3").explicit_env()
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    assert "CUDA_DEVICE_ORDER" not in server.explicit_env()  # the user's own order stands
    assert server.identity()["cuda_device_order"] == "FASTEST_FIRST"


def test_ports_chosen_together_differ():
    ports = free_ports(8)
    assert len(set(ports)) == 8


@pytest.mark.parametrize(("target", "replica"), [("tiny", None), ("tiny", 0), ("a.b-c_d", 12)])
def test_a_replicas_telemetry_device_names_its_target_and_index(target, replica):
    assert device_server(server_device(target, replica)) == (target, replica)
    assert server_device("tiny", None) == "tiny" and server_device("tiny", 1) == "tiny#1"


def test_the_bundled_replicas_example_loads_as_four_replicas_of_two_gpus():
    fleet = load_target(REPO / "configs" / "targets" / "vllm-replicas.example.yaml")
    assert fleet.replica_count == 4 and fleet.replica_gpus == 2
    with pytest.raises(UserError, match="need 8 GPUs; this host shows 4"):
        replica_slots(fleet.name, fleet.replica_count, fleet.replica_gpus, ["0", "1", "2", "3"], None)


@pytest.mark.parametrize(
    ("example", "gpus", "replicas"), [("gemma-4-31b.example.yaml", 2, 1), ("glm-5.1.example.yaml", 16, 3)]
)
def test_the_runbook_candidates_examples_load_with_their_gpus_per_replica(example, gpus, replicas):
    """Gemma 4 31B: tensor parallel 2 from its args; GLM-5.1: 16 GPUs a replica, given (TP 8 x PP 2 over two
    nodes, started outside shadowreplay and listed as endpoints)."""
    target = load_target(REPO / "configs" / "targets" / example)
    assert target.replica_gpus == gpus and target.replica_count == replicas
