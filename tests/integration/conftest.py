"""Fixtures of the integration tests: one local Ray instance, started as the tool starts it, and
the real Azure conversation trace ingested once per module (`azure_log`).

A verb's Session stops the Ray instance it started itself; one that is already running is left
alone. Starting it here once keeps each test's `replay` or `sweep` from paying Ray's start and stop
(several seconds each on a 2-core machine). Tests that need a Ray of their own (fake GPU nodes) shut
this one down first; the verbs after them start and stop their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowreplay.cli import main
from tests.support.traces import AZURE_CONV


@pytest.fixture(scope="session", autouse=True)
def shared_ray() -> Iterator[None]:
    import ray

    from shadowreplay.replay.run.runner import start_ray

    start_ray(None)
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def azure_log(tmp_path_factory) -> Path:
    """The real Azure conversation trace (tests/data/traces), ingested into a traffic log."""
    trace = AZURE_CONV
    log = tmp_path_factory.mktemp("log") / "conv.parquet"
    assert main(["ingest", str(trace), "-o", str(log), "--format", "azure"]) == 0
    return log
