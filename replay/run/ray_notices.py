"""The one Ray notice a replay silences: Ray >= 2.5x logs, on every `ray.init()` that starts a local
instance, "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt
out. ..." (ray._private.authentication.authentication_token_setup, level WARNING). The local instance a
Session starts lives for one run, on 127.0.0.1 ports, and keeps token authentication on; the line
tells the user nothing to act on, so a filter on that logger drops exactly that message. Every other
Ray log line, the warning that token authentication is *disabled* included, still reaches the console.
"""

from __future__ import annotations

import logging

RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
SILENCED_PREFIX = "Token authentication is enabled for this Ray cluster"


class _AuthEnabledNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(SILENCED_PREFIX)


def silence_ray_auth_notice() -> None:
    """Install the filter on Ray's authentication logger (once; later calls change nothing)."""
    logger = logging.getLogger(RAY_AUTH_LOGGER)
    if not any(isinstance(existing, _AuthEnabledNotice) for existing in logger.filters):
        logger.addFilter(_AuthEnabledNotice())
