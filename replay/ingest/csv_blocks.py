"""Reading a CSV file in blocks of whole records, every field as text, with exact row numbers.

Row numbers: the header is not counted, so the first data record is row 1 (on line 2 when no field
spans lines); blank records are counted but skipped. Blocks are cut at newlines outside quoted
fields (RFC 4180 quote parity) and parsed with Arrow's multi-threaded CSV reader; a block where
Arrow refuses (a wrong field count, a blank line, invalid UTF-8) is parsed again with
Python's csv module, record by record, so each bad record is found and numbered.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
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


@dataclass
class CsvBlock:
    """Parsed records of one block: `columns` (string arrays; empty fields are null when the reader
    says so) by header
    name, the 1-based row number of each, and the records that did not parse."""

    columns: dict[str, pa.Array]
    source_rows: np.ndarray
    unparsed: list[QuarantineRecord] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return len(self.source_rows)

    def raw_text(self, index: int) -> str:
        """Row `index` written back as one CSV line."""
        return csv_line([column[index].as_py() or "" for column in self.columns.values()])


def csv_line(fields: list[str]) -> str:
    """Fields joined as one CSV line (quoted where needed), without the line end."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


class CsvRecordReader:
    """The records of a CSV file with a header line, block by block."""

    def __init__(self, path: Path, *, empty_is_null: bool = True, block_bytes: int = READ_BYTES):
        """`empty_is_null`: empty fields read as null (absent); else as empty text."""
        self.path = path
        self.empty_is_null = empty_is_null
        self.block_bytes = block_bytes
        self.header: list[str] = []

    def blocks(self) -> Iterator[CsvBlock]:
        """The data records, block by block (reads the header first)."""
        next_row = 1
        with open_source(self.path) as stream:
            for block, has_quotes in self._record_blocks(stream):
                parsed, consumed = self._parse(block, next_row, has_quotes)
                next_row += consumed
                yield from parsed

    def read_header(self) -> list[str]:
        """Read only the header (the first record)."""
        with open_source(self.path) as stream:
            for _ in self._record_blocks(stream):
                break
        return self.header

    # ---- cutting the byte stream into blocks of whole records --------------------------------

    def _record_blocks(self, stream: pa.NativeFile) -> Iterator[tuple[bytes, bool]]:
        """Blocks of whole records (each ending in a newline) and whether each holds quotes. Blank
        lines at the end of the file are dropped."""
        previous: bytes | None = None
        for block in self._raw_record_blocks(stream):
            if previous is not None:
                yield previous, _QUOTE in previous
            previous = block
        if previous is not None:
            last = previous.rstrip(b"\r\n")
            if last:
                yield last + b"\n", _QUOTE in last

    def _raw_record_blocks(self, stream: pa.NativeFile) -> Iterator[bytes]:
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
                yield buffer[:cut]
        if not header_done:
            self.header = _parse_header(pending, self.path)
        elif pending:
            yield pending + b"\n"

    # ---- parsing one block --------------------------------------------------------------------

    def _parse(self, block: bytes, first_row: int, has_quotes: bool) -> tuple[list[CsvBlock], int]:
        """The block's rows (in pieces) and the number of records it held."""
        fast = self._parse_with_arrow(block, first_row, has_quotes)
        if fast is not None:
            return fast
        parsed, records = self._parse_record_by_record(block, first_row)
        return [parsed], records

    def _parse_with_arrow(self, block: bytes, first_row: int, has_quotes: bool) -> tuple[list[CsvBlock], int] | None:
        """Arrow's parse of the block, one piece per parsed chunk; None when Arrow refuses it (a
        record with the wrong number of fields, a blank line, invalid UTF-8): the block is then
        parsed record by record."""
        try:
            table = pacsv.read_csv(
                io.BytesIO(block),
                read_options=pacsv.ReadOptions(column_names=self.header, use_threads=True, block_size=1 << 20),
                parse_options=pacsv.ParseOptions(newlines_in_values=has_quotes, ignore_empty_lines=False),
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in self.header},
                    strings_can_be_null=self.empty_is_null,
                    null_values=[""] if self.empty_is_null else [],
                    quoted_strings_can_be_null=False,
                ),
            )
        except pa.ArrowException:
            return None
        pieces = []
        row = first_row
        for batch in table.to_batches():
            columns = {name: batch.column(i) for i, name in enumerate(self.header)}
            pieces.append(CsvBlock(columns, np.arange(row, row + batch.num_rows, dtype=np.int64)))
            row += batch.num_rows
        return pieces, table.num_rows

    def _parse_record_by_record(self, block: bytes, first_row: int) -> tuple[CsvBlock, int]:
        text = block.decode("utf-8", errors="surrogateescape")
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


def _newlines_outside_quotes(data: bytes) -> np.ndarray:
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


def _last_record_end(data: bytes) -> int:
    """The offset just past the last complete record (0 when there is none)."""
    if _QUOTE not in data:
        return data.rfind(b"\n") + 1
    ends = _newlines_outside_quotes(data)
    return int(ends[-1]) + 1 if ends.size else 0
