"""SSE parsing for the message-aware relays: every line end, events split anywhere, no line-length limit."""

from __future__ import annotations

import pytest

from gateway.upstream.sse import SseEvent, SseParser, encode_event, ends_at_event_boundary

pytestmark = pytest.mark.unit

STREAM = (
    'id: 1{nl}event: message{nl}data: {{"a":1}}{nl}{nl}'
    ": comment{nl}{nl}"
    "data: line1{nl}data: line2{nl}retry: 500{nl}{nl}"
)


def _feed_all(parser: SseParser, data: bytes, step: int) -> list[SseEvent]:
    out: list[SseEvent] = []
    for i in range(0, len(data), step):
        out.extend(parser.feed(data[i : i + step]))
    return out


@pytest.mark.parametrize("nl", ["\n", "\r", "\r\n"])
@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_line_ends_and_chunking(nl: str, step: int) -> None:
    data = STREAM.format(nl=nl).encode()
    events = _feed_all(SseParser(), data, step)
    assert [(e.id, e.event, e.data, e.retry) for e in events] == [
        ("1", "message", '{"a":1}', None),
        (None, None, None, None),
        (None, None, "line1\nline2", "500"),
    ]
    assert events[1].comments == [" comment"]
    # raw bytes of the events (plus what the parser still holds) are exactly what came in: a relay of the raw
    # events changes nothing. A CRLF split after its CR leaves the LF to the next event (an empty line).
    parser = SseParser()
    events = _feed_all(parser, data, step)
    assert b"".join(e.raw for e in events) + parser.leftover() == data


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    parser = SseParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"\n") == []
    events = parser.feed(b"\r\n")
    assert [e.data for e in events] == ["x"]


def test_mixed_line_ends() -> None:
    events = SseParser().feed(b"data: a\rdata: b\ndata: c\r\n\n")
    assert [e.data for e in events] == ["a\nb\nc"]


def test_sixteen_mib_line() -> None:
    payload = b"x" * (16 * 1024 * 1024)
    data = b"event: message\r\ndata: " + payload + b"\r\n\r\n"
    parser = SseParser()
    events = _feed_all(parser, data, 256 * 1024)
    assert len(events) == 1
    assert events[0].data is not None and len(events[0].data) == len(payload)
    assert events[0].raw == data


def test_is_message() -> None:
    assert SseEvent(b"", data="x").is_message
    assert SseEvent(b"", event="message", data="x").is_message
    assert not SseEvent(b"", event="endpoint", data="/m").is_message
    assert not SseEvent(b"").is_message


def test_encode_event_round_trip() -> None:
    raw = encode_event(data="a\nb", event="message", id="7", retry="100")
    (ev,) = SseParser().feed(raw)
    assert (ev.data, ev.event, ev.id, ev.retry) == ("a\nb", "message", "7", "100")


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (b"\n\n", True),
        (b"x\r\r", True),
        (b"\r\n\r\n", True),
        (b"x\n\r\n", True),
        (b"x\n\r", True),
        (b"a\r\n\r", True),
        (b"data", False),
        (b"ta\n", False),
        (b"ta\r", False),
        (b"a\r\n", False),
    ],
)
def test_event_boundary(tail: bytes, expected: bool) -> None:
    assert ends_at_event_boundary(tail) is expected
    if expected:
        # a keep-alive comment written there leaves the events as they were
        parser = SseParser()
        before = b"data: a" + tail.lstrip(b"axdt")
        events = parser.feed(before + b": keepalive\n\n" + b"data: b\n\n")
        assert [e.data for e in events if e.data is not None] == ["a", "b"]
