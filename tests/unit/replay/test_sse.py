"""The SSE parser: the WHATWG rules, and the same events however the bytes are cut."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shadowreplay.replay.clients.sse import SSEEvent, SSEParser


def parse_all(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events


# -- a model of a valid stream, and its expected events -----------------------------------------
_value_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n\0"), max_size=12)
_event_block = st.fixed_dictionaries(
    {
        "data": st.lists(_value_text, min_size=1, max_size=3),
        "event": st.none() | _value_text.filter(bool),
        "id": st.none() | _value_text,
        "retry": st.none() | st.integers(0, 10**6),
        "comment": st.booleans(),
        "space_after_colon": st.booleans(),
    }
)
_line_ending = st.sampled_from(["\n", "\r\n", "\r"])


def field_line(name: str, value: object, sep: str) -> str:
    """`name: value`, or `name:value` when sep is ":" and the value does not start with a space
    (which that form would lose)."""
    text = str(value)
    if sep == ":" and text.startswith(" "):
        sep = ": "
    return f"{name}{sep}{text}"


@st.composite
def streams(draw) -> tuple[bytes, list[SSEEvent]]:
    """Encoded stream bytes and the events a correct parser yields for them."""
    blocks = draw(st.lists(_event_block, min_size=1, max_size=5))
    lines: list[str] = []
    expected: list[SSEEvent] = []
    last_id = ""
    for block in blocks:
        sep = ": " if block["space_after_colon"] else ":"
        if block["comment"]:
            lines.append(": a comment")
        if block["event"] is not None:
            lines.append(field_line("event", block["event"], sep))
        if block["id"] is not None:
            lines.append(field_line("id", block["id"], sep))
            last_id = block["id"]
        if block["retry"] is not None:
            lines.append(field_line("retry", block["retry"], sep))
        for value in block["data"]:
            lines.append(field_line("data", value, sep))
        lines.append("")
        expected.append(SSEEvent("\n".join(block["data"]), block["event"] or "message", last_id, block["retry"]))
    encoded: list[str] = []
    previous = ""
    for line in lines:
        ending = draw(_line_ending)
        if previous == "\r" and line == "" and ending == "\n":
            ending = "\r\n"  # CR then LF would read as one CRLF, swallowing the empty line
        encoded.append(line + ending)
        previous = ending
    return "".join(encoded).encode("utf-8"), expected


@settings(max_examples=150, deadline=None)
@given(streams(), st.data())
def test_any_split_of_a_stream_gives_the_same_events(stream, data):
    raw, expected = stream
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
    assert parse_all([raw]) == expected
    assert parse_all(chunks) == expected


@settings(max_examples=50, deadline=None)
@given(streams())
def test_byte_by_byte_gives_the_same_events(stream):
    raw, expected = stream
    assert parse_all([raw[i : i + 1] for i in range(len(raw))]) == expected


# -- single rules ---------------------------------------------------------------------------------
def test_multiline_data_is_joined_with_lf_and_one_leading_space_is_dropped():
    assert parse_all([b"data: a\ndata:  b\ndata:c\n\n"]) == [SSEEvent("a\n b\nc")]


def test_utf8_character_split_across_chunks():
    raw = "data: héllo 世界 🙂\n\n".encode()
    cut = raw.index("🙂".encode()) + 2  # inside the 4-byte emoji
    assert parse_all([raw[:cut], raw[cut:]]) == [SSEEvent("héllo 世界 🙂")]


def test_crlf_split_between_cr_and_lf_is_one_line_ending():
    assert parse_all([b"data: x\r", b"\n\r", b"\n"]) == [SSEEvent("x")]
    # A lone CR ends a line too: CR CR is a line and then an empty line.
    assert parse_all([b"data: y\r", b"\r"]) == [SSEEvent("y")]


def test_comments_unknown_fields_and_lines_without_colon():
    raw = b": comment\nfoo: bar\ndata\nevent\n\n"
    # "data" without a colon is the data field with an empty value; "event" alone resets to the default.
    assert parse_all([raw]) == [SSEEvent("", "message")]


def test_block_without_data_is_not_dispatched_and_resets_the_event_type():
    assert parse_all([b"event: ping\n\ndata: x\n\n"]) == [SSEEvent("x", "message")]


def test_empty_data_line_dispatches_an_empty_event():
    assert parse_all([b"data:\n\n"]) == [SSEEvent("")]


def test_id_persists_across_events_and_nul_ids_are_ignored():
    raw = b"id: 7\ndata: a\n\ndata: b\n\nid: x\x00y\ndata: c\n\nid\ndata: d\n\n"
    assert [e.id for e in parse_all([raw])] == ["7", "7", "7", ""]


def test_retry_only_when_all_ascii_digits():
    parser = SSEParser()
    events = parser.feed(b"retry: 1500\ndata: a\n\nretry: 15x\ndata: b\n\nretry: \xc2\xb2\ndata: c\n\n")
    assert [e.retry for e in events] == [1500, None, None]
    assert parser.retry == 1500


def test_leading_bom_is_dropped_once():
    assert parse_all([b"\xef\xbb", b"\xbfdata: a\n\n"]) == [SSEEvent("a")]
    # A BOM later in the stream is not stripped: it makes an unknown field name here.
    assert parse_all([b"data: a\n\n\xef\xbb\xbfdata: b\n\n"]) == [SSEEvent("a")]


def test_unterminated_event_at_end_is_pending_not_dispatched():
    parser = SSEParser()
    assert parser.feed(b"data: [DONE]\n") == []
    assert parser.pending
    complete = SSEParser()
    complete.feed(b"data: x\n\n")
    assert not complete.pending


def test_invalid_utf8_becomes_replacement_characters():
    assert parse_all([b"data: a\xffb\n\n"]) == [SSEEvent("a\ufffdb")]
