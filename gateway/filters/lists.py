"""List answers filtered for the caller by their shape, never by the request they seem to answer.

A `tools/list` result is recognized by what it is (a `result` object holding a `tools` array), not by matching its
id to a request the gateway saw: ids are chosen by the client and may repeat (a `ping` and a `tools/list` sent with
one id), an upstream replays stored answers on a resumed stream (`Last-Event-ID`), and a 2025-03-26 batch comes back
as an array, possibly as one SSE event. So every message an upstream sends towards a caller whose tools are filtered
goes through the caller's filter, objects and the objects of an array alike. Tools are the only list policy hides,
so `tools` is the only list filtered.

Looking costs little: a message whose text cannot hold the key "tools" is relayed without being parsed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

Transform = Callable[[dict[str, Any]], dict[str, Any]]

# No JSON string decodes to "tools" unless its text holds the word itself or a \u escape of one of its letters
# (t, o, l, s are U+006C..U+0074: escapes starting \u006 or \u007). Without any of these, nothing needs parsing.
_MARKS = ("tools", "\\u006", "\\u007")
_BMARKS = tuple(m.encode() for m in _MARKS)
# a mark split across two chunks is found when this many bytes of the previous chunk are kept
MARK_OVERLAP = max(len(m) for m in _BMARKS) - 1


def may_hold_list(text: str) -> bool:
    return _MARKS[0] in text or _MARKS[1] in text or _MARKS[2] in text


def may_hold_list_bytes(data: bytes | bytearray) -> bool:
    return _BMARKS[0] in data or _BMARKS[1] in data or _BMARKS[2] in data


def holds_list(msg: dict[str, Any]) -> bool:
    result = msg.get("result")
    return isinstance(result, dict) and isinstance(result.get("tools"), list)


def apply(transform: Transform, value: Any) -> Any:
    """`value` (a message or an array of messages) through `transform`; the same object when nothing changed."""
    if isinstance(value, dict):
        return transform(value)
    if isinstance(value, list):
        out = [transform(m) if isinstance(m, dict) else m for m in value]
        if all(new is old for new, old in zip(out, value, strict=True)):
            return value
        return out
    return value


class Unfilterable(ValueError):
    """A message that may hold a tools list but is not strict JSON. It is never relayed: a client's parser may be
    laxer than the filter's (the Python SDK's pydantic reads `NaN`, orjson refuses it), and would then show the
    tools the filter could not see."""


def filter_text(transform: Transform, text: str) -> str | None:
    """The filtered JSON text of `text` (one message or an array), or None when it is unchanged. Raises
    Unfilterable when it may hold a list but cannot be parsed."""
    if not may_hold_list(text):
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise Unfilterable("an answer that may hold a tools list is not valid JSON") from None
    new = apply(transform, value)
    return None if new is value else orjson.dumps(new).decode()


def filter_bytes(transform: Transform, body: bytes) -> bytes | None:
    """filter_text() on bytes."""
    if not may_hold_list_bytes(body):
        return None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Unfilterable("an answer that may hold a tools list is not valid JSON") from None
    new = apply(transform, value)
    return None if new is value else orjson.dumps(new)


def drop_tools(msg: dict[str, Any]) -> dict[str, Any]:
    """Fail closed: a caller that may not list tools (any more) is shown none rather than all."""
    if not holds_list(msg):
        return msg
    return {**msg, "result": {**msg["result"], "tools": []}}
