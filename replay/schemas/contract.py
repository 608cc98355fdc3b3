"""What every Parquet file shadowreplay writes says about itself: its kind and schema version.

Each data contract (traffic log, results, telemetry, quarantine, sweep curve) stamps its Arrow
schema with these two metadata keys, and every reader checks them before it trusts a column.
Defined once here, so a writer and a reader can never disagree on the key names.
"""

from __future__ import annotations

METADATA_VERSION_KEY = b"shadowreplay.schema_version"
METADATA_KIND_KEY = b"shadowreplay.kind"


def stamp(kind: str, version: int) -> dict[bytes, bytes]:
    """The schema metadata that marks a file as `kind` at `version`."""
    return {METADATA_VERSION_KEY: str(version).encode(), METADATA_KIND_KEY: kind.encode()}
