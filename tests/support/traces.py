"""The public traces the tests replay and ingest, carried by the project in tests/data/traces/ (xz).

They are the same files as the workplace's shared/traces/ (their NOTICE.md gives source, licence and
attribution), compressed so that a clone with nothing beside it runs every test. Each is decompressed
once into a cache folder named by its SHA-256 and checked against it, then used as a plain file path.
"""

import hashlib
import lzma
import os
import tempfile
from pathlib import Path

from tests.support.paths import TEST_DATA

TRACE_DIR = TEST_DATA / "traces"
# file name -> SHA-256 of the decompressed file (as published)
TRACES = {
    "AzureLLMInferenceTrace_conv.csv": "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8",
    "mooncake_synthetic_trace.jsonl": "bd070915a98fc0ed264d7cfef2ce746002eb3076a695ec31ba2674c0111ec131",
}


def public_trace(name: str) -> Path:
    """The decompressed trace `name`, as a file path (made once per content, shared by test processes)."""
    digest = TRACES[name]
    target = Path(tempfile.gettempdir()) / "shadowreplay-test-traces" / digest[:16] / name
    if target.exists():
        return target
    data = lzma.decompress((TRACE_DIR / f"{name}.xz").read_bytes())
    if hashlib.sha256(data).hexdigest() != digest:
        raise RuntimeError(f"{TRACE_DIR / name}.xz does not decompress to the published trace (SHA-256 differs)")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    partial.replace(target)  # atomic: a concurrent reader sees the whole file or none
    return target


AZURE_CONV = public_trace("AzureLLMInferenceTrace_conv.csv")
MOONCAKE = public_trace("mooncake_synthetic_trace.jsonl")
