"""Incremental Server-Sent Events parser (WHATWG HTML, "Interpreting an event stream").

Bytes go in as they arrive, in chunks cut anywhere; complete events come out. Why not a library:
aiohttp has no SSE *client* parser (aiohttp-sse is the server side); `aiohttp-sse-client` issues its
own GET requests and reconnects on its own, which is wrong for one-shot LLM POSTs, and is no
longer maintained; `httpx-sse` decodes lines of text handed to it by httpx (it would pull in
httpx and still leave line splitting and UTF-8 decoding across chunks to us). The spec's parsing
rules are short, so they are implemented here in full:

- Lines end with CRLF, LF or CR; a CR at the end of one chunk followed by LF at the start of the
  next is one line ending.
- Splitting happens on bytes, before decoding: line endings are ASCII, so they never fall inside a
  multi-byte UTF-8 character, and a character cut across chunks waits in the buffer with the rest
  of its line. Each line is decoded as UTF-8 with replacement characters; one leading BOM of the
  stream is dropped.
- An empty line dispatches the event; lines starting with ':' are comments; `field: value` loses
  one space after the colon; a line without a colon is a field with an empty value; unknown
  fields are ignored.
- `data` lines are joined with LF; an event whose data buffer is empty is not dispatched (its
  event type is reset). `id` sets the last event id (ignored when it contains NUL) which persists
  across events; `retry` is taken only when it is all ASCII digits.
- At the end of the stream an event without its terminating empty line is discarded
  (`pending` says whether one was).
"""

from __future__ import annotations

from dataclasses import dataclass

_BOM = "\ufeff"


@dataclass(slots=True, frozen=True)
class SSEEvent:
    """One dispatched event. `event` defaults to "message"; `id` is the last event id at dispatch;
    `retry` is the reconnection time (ms) given by a `retry` field in this event's block, if any."""

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


class SSEParser:
    """Feed bytes with `feed()`; it returns the events completed by them, in order."""

    __slots__ = ("_buffer", "_skip_lf", "_at_start", "_data", "_event", "_retry", "last_event_id", "retry")

    def __init__(self) -> None:
        self._buffer = b""  # bytes of the current, unterminated line
        self._skip_lf = False  # the previous chunk ended in CR: an LF now completes that CRLF
        self._at_start = True  # no line decoded yet (a BOM may lead the stream)
        self._data: list[str] = []
        self._event = ""
        self._retry: int | None = None  # retry field seen in the current block
        self.last_event_id = ""
        self.retry: int | None = None  # the latest reconnection time given by the stream

    @property
    def pending(self) -> bool:
        """Whether an event or line has begun that no empty line has completed yet."""
        return bool(self._buffer or self._data or self._event)

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume `chunk` (any cut of the stream) and return the events it completes."""
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buffer = self._buffer + chunk if self._buffer else chunk
        if not buffer:
            return []
        events: list[SSEEvent] = []
        if b"\r" not in buffer:  # the common case: LF line endings only
            lines = buffer.split(b"\n")
            self._buffer = lines.pop()
            for line in lines:
                self._line(line, events)
            return events
        pieces = buffer.splitlines(keepends=True)  # bytes.splitlines breaks on CR, LF and CRLF only
        last = pieces[-1]
        if last.endswith((b"\r", b"\n")):
            self._buffer = b""
            # A CR closing the buffer may be the first half of a CRLF split across chunks.
            self._skip_lf = last.endswith(b"\r")
        else:
            self._buffer = pieces.pop()
        for piece in pieces:
            if piece.endswith(b"\r\n"):
                self._line(piece[:-2], events)
            else:
                self._line(piece[:-1], events)
        return events

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        line = raw.decode("utf-8", "replace")
        if self._at_start:
            self._at_start = False
            if line.startswith(_BOM):
                line = line[1:]
        if not line:
            self._dispatch(events)
            return
        if line[0] == ":":
            return
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._retry = self.retry = int(value)

    def _dispatch(self, events: list[SSEEvent]) -> None:
        if self._data:
            events.append(SSEEvent("\n".join(self._data), self._event or "message", self.last_event_id, self._retry))
        self._data = []
        self._event = ""
        self._retry = None
