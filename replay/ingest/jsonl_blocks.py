"""Reading JSON Lines in blocks of whole lines, keeping each line's 1-based line number."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shadowreplay.replay.ingest.source_files import open_source, read_blocks

JSONL_BLOCK_BYTES = 8 << 20


@dataclass(frozen=True)
class LineBlock:
    """Whole lines of a JSONL file: `data` holds them (each ending in a newline except maybe the
    file's last), the first of which is line `first_line` (1-based)."""

    data: bytes
    first_line: int

    def lines(self) -> list[bytes]:
        """The block's lines, without their line ends."""
        lines = self.data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        return [line[:-1] if line.endswith(b"\r") else line for line in lines]

    def line_count(self) -> int:
        return self.data.count(b"\n") + (0 if self.data.endswith(b"\n") else 1)


def iter_line_blocks(path: Path, block_bytes: int = JSONL_BLOCK_BYTES) -> Iterator[LineBlock]:
    """The file's lines in blocks of about `block_bytes` (a longer line makes a longer block)."""
    next_line = 1
    pending = b""
    with open_source(path) as stream:
        for chunk in read_blocks(stream, path, block_bytes):
            buffer = pending + chunk if pending else chunk
            cut = buffer.rfind(b"\n") + 1
            if cut == 0:
                pending = buffer
                continue
            block = LineBlock(buffer[:cut], next_line)
            pending = buffer[cut:]
            next_line += block.line_count()
            yield block
    if pending:
        yield LineBlock(pending, next_line)
