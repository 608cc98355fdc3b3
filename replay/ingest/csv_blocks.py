"""Reading a CSV file in blocks of whole records, every field as text (or typed, where asked), with
exact row numbers.

Row numbers: the header is not counted, so the first data record is row 1 (on line 2 when no field
spans lines); blank records are counted but skipped. Blocks are cut at newlines outside quoted
fields (RFC 4180 quote parity) and parsed with Arrow's multi-threaded CSV reader; a block where
Arrow refuses (a wrong field count, invalid UTF-8), or one with a blank line (which Arrow would
read as a record of nulls), is parsed with Python's csv module, record by record, so each bad
record is found and numbered and each blank one skipped. An uncompressed
file is mapped into memory and the same blocks are cut out of it without copying.

Typed reads: a reader given `column_types` first reads each block with those columns converted by
Arrow as it parses (about 15% less CPU than text plus a cast afterwards). That is used only for
blocks with no quote and no carriage return and, where an integer type is asked for, no `x` or `X`
(Arrow's integer parser reads `0x10` as 16): there every line is one record, so a row's raw text is
its line, and Arrow's integer and timestamp parsers accept a subset of what the text validators
accept (they skip spaces and tabs around integers), with the same values. A block that Arrow cannot
convert is read as text as above (after four such blocks, so is the rest of the source), so the
validators see the same values either way.
"""

from __future__ import annotations

import csv
import io
import mmap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from shadowreplay.replay.ingest.errors import IngestError
from shadowreplay.replay.ingest.problems import QuarantineRecord
from shadowreplay.replay.ingest.source_files import READ_BYTES, one_line, open_source, read_blocks

_QUOTE = ord('"')
_NEWLINE = ord("\n")
_ARROW_BLOCK_BYTES = 1 << 22
# A source whose blocks keep failing the typed read (bad values all over) is read as text from then on.
_TYPED_FAILURES_ALLOWED = 4
_DONT_NEED = getattr(mmap, "MADV_DONTNEED", None)


@dataclass
class CsvBlock:
    """Parsed records of one block: `columns` (string arrays; empty fields are null when the reader
    says so) by header
    name, the 1-based row number of each, and the records that did not parse."""

    columns: dict[str, pa.Array]
    source_rows: np.ndarray
    unparsed: list[QuarantineRecord] = field(default_factory=list)
    # typed reads: the block's lines and the line of this piece's first row (the columns are not text)
    lines: _BlockLines | None = None
    first_line: int = 0

    @property
    def num_rows(self) -> int:
        return len(self.source_rows)

    def raw_text(self, index: int) -> str:
        """Row `index` written back as one CSV line."""
        if self.lines is not None:
            fields = self.lines.line(self.first_line + index).split(",")
            return csv_line([""] * len(self.columns) if fields == [""] else fields)  # a blank line: all empty
        return csv_line([column[index].as_py() or "" for column in self.columns.values()])


@dataclass(frozen=True)
class _Block:
    """Whole records: bytes `start` .. `end` of `data` (read bytes or the mapped file; a view, so
    cutting blocks copies nothing)."""

    data: bytes | mmap.mmap
    start: int
    end: int

    @classmethod
    def of(cls, data: bytes) -> _Block:
        return cls(data, 0, len(data))

    def contains(self, byte: bytes) -> bool:
        return self.data.find(byte, self.start, self.end) >= 0

    def has_blank_line(self) -> bool:
        """An empty line (or one of only a carriage return), which Arrow would read as a record of nulls."""
        first = self.data[self.start : self.start + 1]
        return first in (b"\n", b"\r") or self.contains(b"\n\n") or self.contains(b"\n\r\n")

    def to_bytes(self) -> bytes:
        if isinstance(self.data, bytes) and (self.start, self.end) == (0, len(self.data)):
            return self.data
        return self.data[self.start : self.end]

    def arrow_buffer(self) -> pa.Buffer:
        return pa.py_buffer(self.data).slice(self.start, self.end - self.start)


class _BlockLines:
    """The lines of a block that has no quotes and no carriage returns (one record per line); the
    line index is built on first use, which only a block with a quarantined row needs."""

    def __init__(self, block: _Block):
        self.block = block
        self._ends: np.ndarray | None = None

    def line(self, index: int) -> str:
        block = self.block
        if self._ends is None:
            raw = np.frombuffer(block.data, dtype=np.uint8, count=block.end - block.start, offset=block.start)
            self._ends = block.start + np.flatnonzero(raw == _NEWLINE)
        start = int(self._ends[index - 1]) + 1 if index else block.start
        return block.data[start : int(self._ends[index])].decode("utf-8")


def csv_line(fields: list[str]) -> str:
    """Fields joined as one CSV line (quoted where needed), without the line end."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


class CsvRecordReader:
    """The records of a CSV file with a header line, block by block."""

    def __init__(
        self,
        path: Path,
        *,
        empty_is_null: bool = True,
        block_bytes: int = READ_BYTES,
        column_types: Mapping[str, pa.DataType] | None = None,
    ):
        """`empty_is_null`: empty fields read as null (absent); else as empty text. `column_types`:
        columns to read typed where the block allows it (see the module docstring); the others,
        and every column of the other blocks, are text."""
        self.path = path
        self.empty_is_null = empty_is_null
        self.block_bytes = block_bytes
        self.column_types = dict(column_types or {})
        self._typed_integers = any(pa.types.is_integer(kind) for kind in self.column_types.values())
        self._typed_failures = 0
        self.header: list[str] = []

    def blocks(self) -> Iterator[CsvBlock]:
        """The data records, block by block (reads the header first)."""
        next_row = 1
        with open_source(self.path) as stream:
            mapped = None if isinstance(stream, pa.CompressedInputStream) else self._map()
            raw_blocks = self._raw_record_blocks(stream) if mapped is None else self._mapped_record_blocks(mapped)
            for block, has_quotes in self._record_blocks(raw_blocks):
                parsed, consumed = self._parse(block, next_row, has_quotes)
                next_row += consumed
                yield from parsed

    def read_header(self) -> list[str]:
        """Read only the header (the first record)."""
        with open_source(self.path) as stream:
            for _ in self._record_blocks(self._raw_record_blocks(stream)):
                break
        return self.header

    # ---- cutting the byte stream into blocks of whole records --------------------------------

    def _record_blocks(self, raw_blocks: Iterator[_Block]) -> Iterator[tuple[_Block, bool]]:
        """Blocks of whole records (each ending in a newline) and whether each holds quotes. Blank
        lines at the end of the file are dropped."""
        previous: _Block | None = None
        for block in raw_blocks:
            if previous is not None:
                yield previous, previous.contains(b'"')
            previous = block
        if previous is not None:
            last = previous.to_bytes().rstrip(b"\r\n")
            if last:
                yield _Block.of(last + b"\n"), _QUOTE in last

    def _raw_record_blocks(self, stream: pa.NativeFile) -> Iterator[_Block]:
        pending = b""
        header_done = False
        for chunk in read_blocks(stream, self.path, self.block_bytes):
            buffer = pending + chunk if pending else chunk
            if not header_done:
                end = _first_record_end(buffer)
                if end is None:
                    pending = buffer
                    continue
                self.header = _parse_header(buffer[:end], self.path)
                buffer = buffer[end:]
                header_done = True
            cut = _last_record_end(buffer)
            pending = buffer[cut:]
            if cut:
                yield _Block(buffer, 0, cut)
        if not header_done:
            self.header = _parse_header(pending, self.path)
        elif pending:
            yield _Block.of(pending + b"\n")

    def _map(self) -> mmap.mmap | None:
        """The (uncompressed) file mapped into memory, or None where it cannot be: blocks are then
        views of the page cache, with no copy and no fresh memory per block."""
        try:
            with self.path.open("rb") as handle:
                return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return None  # read it as a stream instead

    def _mapped_record_blocks(self, mapped: mmap.mmap) -> Iterator[_Block]:
        """As `_raw_record_blocks`, with the same blocks, cut out of the mapped file; the pages of
        blocks already parsed are handed back to the page cache as it goes (the process's resident
        memory does not grow with the file)."""
        size = len(mapped)
        start = 0  # the first byte not yet in a block
        read_end = 0
        released = 0
        header_done = False
        starts: list[int] = []
        while read_end < size:
            read_end = min(size, read_end + self.block_bytes)
            if not header_done:
                head = mapped[start:read_end]
                end = _first_record_end(head)
                if end is None:
                    continue
                self.header = _parse_header(head[:end], self.path)
                start, header_done = end, True
            cut = _last_record_end(mapped, start, read_end)
            if cut:
                yield _Block(mapped, start, start + cut)
                starts.append(start)
                start += cut
                if len(starts) > 2:  # blocks before the last two are parsed; their pages can go
                    release_to = starts[-3] // mmap.PAGESIZE * mmap.PAGESIZE
                    if release_to > released and _DONT_NEED is not None:
                        mapped.madvise(_DONT_NEED, released, release_to - released)
                        released = release_to
        if not header_done:
            self.header = _parse_header(mapped[start:size], self.path)
        elif start < size:
            yield _Block.of(mapped[start:size] + b"\n")

    # ---- parsing one block --------------------------------------------------------------------

    def _parse(self, block: _Block, first_row: int, has_quotes: bool) -> tuple[list[CsvBlock], int]:
        """The block's rows (in pieces) and the number of records it held."""
        if self.column_types and self._typed_read_allowed(block, has_quotes):
            typed = self._parse_with_arrow(block, first_row, has_quotes, typed=True)
            if typed is not None:
                return typed
            self._typed_failures += 1
        fast = None if block.has_blank_line() else self._parse_with_arrow(block, first_row, has_quotes)
        if fast is not None:
            return fast
        parsed, records = self._parse_record_by_record(block, first_row)
        return [parsed], records

    def _typed_read_allowed(self, block: _Block, has_quotes: bool) -> bool:
        if self._typed_failures >= _TYPED_FAILURES_ALLOWED or has_quotes or block.contains(b"\r"):
            return False
        if block.has_blank_line():  # skipped record by record, keeping its row number
            return False
        return not self._typed_integers or not (block.contains(b"x") or block.contains(b"X"))

    def _parse_with_arrow(
        self, block: _Block, first_row: int, has_quotes: bool, *, typed: bool = False
    ) -> tuple[list[CsvBlock], int] | None:
        """Arrow's parse of the block, one piece per parsed chunk; None when Arrow refuses it (a
        record with the wrong number of fields, a blank line, invalid UTF-8; when `typed`, a value
        it cannot convert): the block is then parsed as text, or record by record."""
        types = self.column_types if typed else {}
        column_types = {name: types.get(name, pa.string()) for name in self.header}
        try:
            table = pacsv.read_csv(
                pa.BufferReader(block.arrow_buffer()),
                read_options=pacsv.ReadOptions(
                    column_names=self.header, use_threads=True, block_size=_ARROW_BLOCK_BYTES
                ),
                parse_options=pacsv.ParseOptions(newlines_in_values=has_quotes, ignore_empty_lines=False),
                convert_options=pacsv.ConvertOptions(
                    column_types=column_types,
                    strings_can_be_null=self.empty_is_null,
                    null_values=[""] if self.empty_is_null else [],
                    quoted_strings_can_be_null=False,
                ),
            )
        except pa.ArrowException:
            return None
        pieces = []
        row = first_row
        lines = _BlockLines(block) if typed else None
        for batch in table.to_batches():
            columns = {name: batch.column(i) for i, name in enumerate(self.header)}
            source_rows = np.arange(row, row + batch.num_rows, dtype=np.int64)
            pieces.append(CsvBlock(columns, source_rows, lines=lines, first_line=row - first_row))
            row += batch.num_rows
        return pieces, table.num_rows

    def _parse_record_by_record(self, block: _Block, first_row: int) -> tuple[CsvBlock, int]:
        text = block.to_bytes().decode("utf-8", errors="surrogateescape")
        width = len(self.header)
        values: list[list[str | None]] = [[] for _ in range(width)]
        rows: list[int] = []
        unparsed: list[QuarantineRecord] = []
        count = 0
        try:
            for index, fields in enumerate(csv.reader(io.StringIO(text, newline=""), strict=False)):
                count = index + 1
                row = first_row + index
                if not fields or fields == [""]:
                    if width == 1:
                        rows.append(row)
                        values[0].append(None if self.empty_is_null else "")
                    continue
                line = csv_line(fields)
                if len(fields) != width:
                    unparsed.append(
                        QuarantineRecord(
                            row,
                            None,
                            "unparseable_row",
                            f"{len(fields)} fields, the header has {width}",
                            _printable(line),
                        )
                    )
                    continue
                if not _is_utf8(line):
                    unparsed.append(QuarantineRecord(row, None, "unparseable_row", "not valid UTF-8", _printable(line)))
                    continue
                rows.append(row)
                for column, value in zip(values, fields):
                    column.append(None if value == "" and self.empty_is_null else value)
        except csv.Error as exc:
            raise IngestError(f"{self.path}: CSV parse error near row {first_row + count}: {one_line(exc)}") from None
        columns = {name: pa.array(column, type=pa.string()) for name, column in zip(self.header, values)}
        return CsvBlock(columns, np.asarray(rows, dtype=np.int64), unparsed), count


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(text: str) -> str:
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def _parse_header(data: bytes, path: Path) -> list[str]:
    if not data.strip():
        raise IngestError(f"{path}: no header line")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise IngestError(f"{path}: the header line is not UTF-8 text") from None
    names = next(csv.reader(io.StringIO(text, newline="")), [])
    names = [name.strip() for name in names]
    if not names or all(not name for name in names):
        raise IngestError(f"{path}: no header line")
    if len(set(names)) != len(names):
        raise IngestError(f"{path}: the header repeats a column name: {names}")
    return names


def _newlines_outside_quotes(data: bytes | memoryview) -> np.ndarray:
    """Positions of the newlines that end records (an even number of quotes before them)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(raw == _NEWLINE)
    quotes_before = np.cumsum(raw == _QUOTE, dtype=np.int64)[newlines]
    return newlines[(quotes_before & 1) == 0]


def _first_record_end(data: bytes) -> int | None:
    """The offset just past the first record's newline, or None when it is not complete yet."""
    newline = data.find(b"\n")
    if newline < 0:
        return None
    if _QUOTE not in data[:newline]:
        return newline + 1
    ends = _newlines_outside_quotes(data)
    return int(ends[0]) + 1 if ends.size else None


def _last_record_end(data: bytes | mmap.mmap, start: int = 0, end: int | None = None) -> int:
    """The offset from `start` just past the last complete record of data[start:end] (0 when
    there is none)."""
    end = len(data) if end is None else end
    if data.find(b'"', start, end) < 0:
        return max(0, data.rfind(b"\n", start, end) + 1 - start)
    ends = _newlines_outside_quotes(memoryview(data)[start:end])
    return int(ends[-1]) + 1 if ends.size else 0
