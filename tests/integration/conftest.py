"""One local Ray instance for the integration tests, started as the tool starts it.

A verb's Session stops the Ray instance it started itself; one that is already running is left
alone. Starting it here once keeps each test's `replay` or `sweep` from paying Ray's start and stop
(several seconds each on a 2-core machine). Tests that need a Ray of their own (fake GPU nodes) shut
this one down first; the verbs after them start and stop their own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def shared_ray() -> Iterator[None]:
    import ray

    from shadowreplay.replay.run.runner import start_ray

    start_ray(None)
    yield
    if ray.is_initialized():
        ray.shutdown()
