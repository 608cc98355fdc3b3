"""The one error root: every error meant for the user is a `ShadowReplayError`.

A verb lets a `ShadowReplayError` reach the CLI, which prints it as one line (`shadowreplay VERB:
message`) and exits with its `exit_code`; anything else is a programming error and keeps its
traceback. Each package raises its own subclass (`TargetConfigError`, `TrafficLogError`,
`RunDirError`, ...), so a caller can catch one concern or all of them. This module imports nothing
of shadowreplay's (an import-linter contract), so every layer may raise from it.
"""


class ShadowReplayError(Exception):
    """An error the user can act on: bad input, a missing file or key, a server that did not start."""

    exit_code: int = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UserError(ShadowReplayError):
    """A verb's own complaint about its command line or inputs (the verbs' name for the root)."""
