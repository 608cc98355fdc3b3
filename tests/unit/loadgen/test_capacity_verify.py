"""`capacity --verify`'s fleets: a target at n replicas (the first n endpoints, or vllm.replicas: n),
and what cannot be verified refused with its reason before any replay."""

from __future__ import annotations

import pytest

from shadowreplay.cli import main
from shadowreplay.errors import UserError
from shadowreplay.loadgen.capacity_verify import fleet_target
from shadowreplay.replay.targets.config import load_target


def _endpoints(tmp_path, count: int):
    urls = "".join(f"  - http://127.0.0.1:{8000 + i}/v1\n" for i in range(count))
    path = tmp_path / "fleet.yaml"
    path.write_text(f"name: fleet\nkind: openai\nmodel: m\nendpoints:\n{urls}")
    return load_target(path)


def test_a_fleet_of_n_is_the_first_n_endpoints_or_n_vllm_servers(tmp_path):
    target = _endpoints(tmp_path, 3)
    two = fleet_target(target, 2)
    assert two.endpoints == target.endpoints[:2] and two.base_url == target.endpoints[0]
    assert two.replica_count == 2 and target.replica_count == 3  # the loaded target is left as it was
    path = tmp_path / "vllm.yaml"
    path.write_text("name: v\nkind: vllm\nmodel: m\nvllm: {model: /models/m}\n")
    assert fleet_target(load_target(path), 3).replica_count == 3


def test_what_cannot_be_verified_is_refused_with_its_reason(tmp_path):
    with pytest.raises(UserError, match=r"fleet\.yaml: --verify replays 4 replicas, but the target lists 3"):
        fleet_target(_endpoints(tmp_path, 3), 4)
    path = tmp_path / "one.yaml"
    path.write_text("name: one\nkind: openai\nmodel: m\nbase_url: http://127.0.0.1:9/v1\n")
    assert fleet_target(load_target(path), 1).base_url == "http://127.0.0.1:9/v1"
    with pytest.raises(UserError, match="give the target `endpoints:`"):
        fleet_target(load_target(path), 2)


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--verify"], "--verify needs --target"), (["--target", "t.yaml"], "--target is for --verify")],
)
def test_the_verb_refuses_verify_without_its_options(tmp_path, capsys, extra, message):
    assert main(["capacity", "--sweep", str(tmp_path), "--log", str(tmp_path / "log.parquet"), *extra]) == 2
    assert message in capsys.readouterr().err
