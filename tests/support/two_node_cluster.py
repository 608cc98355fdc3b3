"""A real two-node Ray cluster on this machine, in a process of its own: a head node and a second
node, each with its own raylet, object store, CPUs and a custom resource naming it (`node_a`,
`node_b`), started with Ray's own multi-node tooling (ray.cluster_utils.Cluster). The replay joins
it as it joins any cluster (`--address`); `kill_second_node()` kills the second node's raylet and
workers without warning, as a lost machine would.

Run in a child process so that the cluster's start and shutdown (which reset Ray's process-global
state) never touch the test process's own Ray. Commands on stdin: `kill`, `stop`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

NODE_CPUS = 1


class TwoNodeCluster:
    """`with TwoNodeCluster() as cluster: cluster.address`, `cluster.kill_second_node()`."""

    def __init__(self, start_timeout_s: float = 180.0):
        self.start_timeout_s = start_timeout_s
        self.address = ""
        self.nodes: dict[str, Any] = {}
        self._child: subprocess.Popen | None = None

    def __enter__(self) -> TwoNodeCluster:
        self._child = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started = self._read_line()
        self.address, self.nodes = started["address"], started["nodes"]
        return self

    def _read_line(self) -> dict:
        assert self._child is not None and self._child.stdout is not None
        line = self._child.stdout.readline()
        if not line:
            raise RuntimeError(f"the two-node cluster did not start (exit {self._child.poll()})")
        return json.loads(line)

    def kill_second_node(self) -> dict:
        assert self._child is not None and self._child.stdin is not None
        self._child.stdin.write("kill\n")
        self._child.stdin.flush()
        return self._read_line()

    def __exit__(self, *exc: object) -> None:
        if self._child is None:
            return
        try:
            assert self._child.stdin is not None
            self._child.stdin.write("stop\n")
            self._child.stdin.flush()
            self._child.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self._child.kill()
            self._child.wait()


def _serve() -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": NODE_CPUS, "resources": {"node_a": 1}, "include_dashboard": False},
    )
    second = cluster.add_node(num_cpus=NODE_CPUS, resources={"node_b": 1})
    cluster.wait_for_nodes()
    assert cluster.head_node is not None
    nodes = {"head": cluster.head_node.node_id, "second": second.node_id}
    print(json.dumps({"address": cluster.address, "nodes": nodes}), flush=True)
    try:
        for command in sys.stdin:
            if command.strip() == "kill":
                began = time.monotonic()
                cluster.remove_node(second, allow_graceful=False)
                print(json.dumps({"killed": nodes["second"], "took_s": time.monotonic() - began}), flush=True)
            elif command.strip() == "stop":
                break
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    _serve()
