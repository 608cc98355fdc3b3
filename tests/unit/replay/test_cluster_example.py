"""The bundled KubeRay example (configs/cluster/raycluster.example.yaml) is a RayCluster of the Ray
shadowreplay runs with, and every pod mounts the run directory at the same path."""

from __future__ import annotations

from pathlib import Path

import ray
import yaml

EXAMPLE = Path(__file__).resolve().parents[3] / "configs" / "cluster" / "raycluster.example.yaml"


def test_the_kuberay_example_is_a_raycluster_of_our_ray_with_the_run_directory_on_every_pod():
    cluster = yaml.safe_load(EXAMPLE.read_text())
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    assert cluster["spec"]["rayVersion"] == ray.__version__
    pods = [cluster["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in cluster["spec"]["workerGroupSpecs"]]
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        assert {"name": "runs", "mountPath": "/runs"} in container["volumeMounts"]
