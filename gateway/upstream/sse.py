"""Incremental Server-Sent Events parser for the few places the gateway must look inside a stream.

Plain relaying never parses (bytes go through as they arrive). This parser serves message-aware relays
(filtering a `tools/list` result, rewriting a legacy `endpoint` event). It accepts CR, LF and CRLF line ends, even
when a CRLF is split across chunks, and has no line-length limit (a 16 MiB `data:` line is one line).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SseEvent:
    # raw bytes of the event including its terminating blank line, exactly as received
    raw: bytes
    event: str | None = None
    data: str | None = None
    id: str | None = None
    retry: str | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def is_message(self) -> bool:
        return self.data is not None and self.event in (None, "", "message")


def encode_event(
    *, data: str | None, event: str | None = None, id: str | None = None, retry: str | None = None
) -> bytes:
    parts: list[str] = []
    if id is not None:
        parts.append(f"id: {id}")
    if event is not None:
        parts.append(f"event: {event}")
    if retry is not None:
        parts.append(f"retry: {retry}")
    if data is not None:
        parts.extend(f"data: {line}" for line in data.split("\n"))
    return ("\n".join(parts) + "\n\n").encode()


def ends_at_event_boundary(tail: bytes) -> bool:
    """True when bytes ending in `tail` (its last 4 bytes suffice) end an event: two line ends in a row, where CRLF
    counts as one. A comment written there cannot split an event. A lone trailing CR may still be the first half of
    a CRLF; if the LF follows after our comment it only adds an empty line, which dispatches nothing."""
    if tail.endswith(b"\r\n"):
        body = tail[:-2]
    elif tail.endswith((b"\n", b"\r")):
        body = tail[:-1]
    else:
        return False
    return body.endswith((b"\n", b"\r"))


class SseParser:
    def __init__(self) -> None:
        self._buf = bytearray()
        self._scan = 0  # where to resume looking for a line end
        self._line_start = 0
        self._event_start = 0
        self._pending_cr = False
        self._fields: dict[str, list[str]] = {}
        self._comments: list[str] = []

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buf += chunk
        events: list[SseEvent] = []
        buf = self._buf
        i = self._scan
        n = len(buf)
        while i < n:
            c = buf[i]
            if self._pending_cr:
                self._pending_cr = False
                if c == 0x0A:  # the LF of a CRLF split at the previous position
                    i += 1
                    self._line_start = i
                    continue
            if c in (0x0A, 0x0D):
                line = bytes(buf[self._line_start : i])
                if c == 0x0D:
                    if i + 1 < n:
                        if buf[i + 1] == 0x0A:
                            i += 1
                    else:
                        self._pending_cr = True
                i += 1
                self._line_start = i
                ev = self._line(line, i)
                if ev is not None:
                    events.append(ev)
                continue
            # fast skip to the next line end
            nl = buf.find(b"\n", i)
            cr = buf.find(b"\r", i)
            nxt = min(x for x in (nl, cr, n) if x >= 0)
            i = nxt
        # compact consumed bytes so the buffer never grows past one unfinished event
        if self._event_start:
            del buf[: self._event_start]
            self._line_start -= self._event_start
            i -= self._event_start
            self._event_start = 0
        self._scan = i
        return events

    def leftover(self) -> bytes:
        """Bytes received but not part of an emitted event (an unfinished event, or the LF of a CRLF whose CR
        ended the last event). A relay writes them at end of stream so nothing is lost."""
        return bytes(self._buf[self._event_start :])

    def _line(self, line: bytes, end: int) -> SseEvent | None:
        if not line:
            raw = bytes(self._buf[self._event_start : end])
            self._event_start = end
            fields, comments = self._fields, self._comments
            self._fields, self._comments = {}, []
            if not fields and not comments:
                return None
            data = "\n".join(fields["data"]) if "data" in fields else None
            return SseEvent(
                raw=raw,
                event=fields.get("event", [None])[-1],
                data=data,
                id=fields.get("id", [None])[-1],
                retry=fields.get("retry", [None])[-1],
                comments=comments,
            )
        text = line.decode("utf-8", errors="replace")
        if text.startswith(":"):
            self._comments.append(text[1:])
            return None
        name, sep, value = text.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        self._fields.setdefault(name, []).append(value)
        return None
