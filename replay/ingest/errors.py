"""The error ingest raises for a source it cannot read at all (missing, unreadable, corrupt, wrong
format). Row-level problems never raise: they go to the quarantine file."""

from shadowreplay.errors import ShadowReplayError


class IngestError(ShadowReplayError, ValueError):
    """A whole-file problem, worded as one line that names the file and the problem."""
