"""What every Parquet file shadowreplay writes says about itself: its kind and schema version.

Each data contract (traffic log, results, telemetry, quarantine, sweep curve) stamps its Arrow
schema with these two metadata keys, and every reader checks them with `stamp_problem` before it
trusts a column. Defined once here, so a writer and a reader can never disagree on the key names.
"""

from __future__ import annotations

from collections.abc import Mapping

METADATA_VERSION_KEY = b"shadowreplay.schema_version"
METADATA_KIND_KEY = b"shadowreplay.kind"


def stamp(kind: str, version: int) -> dict[bytes, bytes]:
    """The schema metadata that marks a file as `kind` at `version`."""
    return {METADATA_VERSION_KEY: str(version).encode(), METADATA_KIND_KEY: kind.encode()}


def stamp_problem(metadata: Mapping[bytes, bytes] | None, kind: str, version: int) -> str | None:
    """Why a file with schema `metadata` is not `kind` at `version`, in words; None when it is.
    A file without a kind key is taken as `kind` (files written before kinds were stamped)."""
    meta = metadata or {}
    found_kind = meta.get(METADATA_KIND_KEY, kind.encode())
    if found_kind != kind.encode():
        return f"not a {kind} file (kind {found_kind.decode(errors='replace')!r})"
    found = meta.get(METADATA_VERSION_KEY)
    if found is None:
        return f"no {METADATA_VERSION_KEY.decode()} in the file metadata"
    try:
        number = int(found)
    except ValueError:
        return f"{kind} schema_version {found.decode(errors='replace')!r} is not a number"
    if number != version:
        return f"{kind} schema_version {number}, this shadowreplay reads {version}"
    return None
