"""Ray's "token authentication is enabled" line, logged on every local ray.init(), is dropped by the
filter replay/run/ray_notices.py installs when the runner is imported; Ray's other lines still pass."""

from __future__ import annotations

import logging

import pytest

from shadowreplay.replay.run.ray_notices import RAY_AUTH_LOGGER, silence_ray_auth_notice


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def collected():
    """Messages that pass the auth logger's filters (a handler on that logger itself)."""
    import shadowreplay.replay.run.runner  # noqa: F401  (installs the filter, as a replay does)

    logger = logging.getLogger(RAY_AUTH_LOGGER)
    handler = Collect()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def test_rays_own_enabled_notice_is_dropped_and_the_disabled_warning_kept(collected):
    from ray._private.authentication import authentication_token_setup as setup

    assert setup.logger.name == RAY_AUTH_LOGGER
    setup._warn_token_auth_enabled()  # what ray.init() logs when it starts a local instance
    assert collected == []
    setup._warn_token_auth_disabled()
    assert len(collected) == 1 and collected[0].startswith("Token authentication is disabled")
    logging.getLogger(RAY_AUTH_LOGGER).warning("Generated new authentication token and saved to /x")
    assert len(collected) == 2


def test_installing_twice_adds_one_filter(collected):
    silence_ray_auth_notice()
    silence_ray_auth_notice()
    assert len(logging.getLogger(RAY_AUTH_LOGGER).filters) == 1
