"""Opening a source file for streaming reads, with one-line errors for the user.

Files ending in a compression suffix that Arrow recognises (`.gz`, `.bz2`, `.zst`, `.lz4`) are
decompressed on the fly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from shadowreplay.replay.ingest.errors import IngestError

READ_BYTES = 16 << 20


def check_readable(path: Path) -> None:
    """Raise IngestError unless `path` is an existing, readable, non-empty regular file."""
    if not path.exists():
        raise IngestError(f"{path}: no such file")
    if path.is_dir():
        raise IngestError(f"{path}: is a directory, not a file")
    if not os.access(path, os.R_OK):
        raise IngestError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise IngestError(f"{path}: the file is empty")


def open_source(path: Path) -> pa.NativeFile:
    """A byte stream over `path` (decompressed when its suffix says so)."""
    check_readable(path)
    try:
        return pa.input_stream(str(path), compression="detect")
    except (OSError, pa.ArrowException) as exc:
        raise IngestError(f"{path}: cannot open: {one_line(exc)}") from None


def read_blocks(stream: pa.NativeFile, path: Path, block_bytes: int = READ_BYTES) -> Iterator[bytes]:
    """The bytes of `stream` in blocks of about `block_bytes`; read errors (a truncated or corrupt
    compressed file) become IngestError."""
    while True:
        try:
            block = stream.read(block_bytes)
        except (OSError, pa.ArrowException, EOFError) as exc:
            raise IngestError(f"{path}: read failed: {one_line(exc)}") from None
        if not block:
            return
        yield block


def head_bytes(path: Path, size: int = 1 << 16) -> bytes:
    """The first `size` bytes of the (decompressed) file, for format detection."""
    with open_source(path) as stream:
        for block in read_blocks(stream, path, size):
            return block
    return b""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
