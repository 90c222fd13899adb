"""Tools lists are recognized by their shape (filters/lists.py), and request ids in flight by the upstream's
reading of them (transports/inflight.py)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from gateway.errors import InvalidRequest
from gateway.filters.lists import (
    Unfilterable,
    apply,
    drop_tools,
    filter_bytes,
    filter_text,
    may_hold_list,
    may_hold_list_bytes,
)
from gateway.jsonrpc import Envelope, Kind
from gateway.transports.inflight import InFlightIds, SessionInFlight, distinct_ids, id_key

pytestmark = pytest.mark.unit

TOOLS = [{"name": "echo"}, {"name": "secret"}]


def hide_secret(msg: dict[str, Any]) -> dict[str, Any]:
    result = msg.get("result")
    if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
        return msg
    kept = [t for t in result["tools"] if t["name"] != "secret"]
    return msg if len(kept) == len(result["tools"]) else {**msg, "result": {"tools": kept}}


def req(rpc_id: Any, method: str = "ping") -> Envelope:
    return Envelope(Kind.REQUEST, rpc_id, method)


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"id": 1, "result": {"tools": TOOLS}}),
        json.dumps({"id": 1, "result": {"tools": TOOLS}}, ensure_ascii=True).replace("tools", "\\u0074ools"),
        json.dumps({"id": 1, "result": {"tools": TOOLS}}).replace("tools", "too\\u006Cs"),
        json.dumps([{"id": 1, "result": {}}, {"id": 2, "result": {"tools": TOOLS}}]),
    ],
)
def test_any_spelling_of_a_tools_list_is_filtered(text: str) -> None:
    assert may_hold_list(text) and may_hold_list_bytes(text.encode())
    out = filter_text(hide_secret, text)
    assert out is not None and "secret" not in out and "echo" in out
    assert filter_bytes(hide_secret, text.encode()) == out.encode()


def test_what_cannot_hold_a_list_is_not_parsed() -> None:
    text = json.dumps({"id": 1, "result": {"content": [{"type": "text", "text": "caf\u00e9 \\u00e9"}]}})
    assert not may_hold_list(text)
    assert filter_text(hide_secret, text) is None
    # may hold a list but is not JSON: never relayed as it is (a laxer client parser would show the list)
    with pytest.raises(Unfilterable):
        filter_text(hide_secret, "not json tools")
    with pytest.raises(Unfilterable):
        filter_text(hide_secret, '{"id": 1, "result": {"tools": [], "x": NaN}}')


def test_arrays_keep_their_identity_when_nothing_changes() -> None:
    value = [{"id": 1, "result": {"tools": [{"name": "echo"}]}}, 3]
    assert apply(hide_secret, value) is value
    changed = apply(hide_secret, [*value, {"id": 2, "result": {"tools": TOOLS}}])
    assert changed[2]["result"]["tools"] == [{"name": "echo"}] and changed[:2] == value


def test_drop_tools_only_touches_lists() -> None:
    assert drop_tools({"id": 1, "result": {"tools": TOOLS, "nextCursor": "c"}})["result"] == {
        "tools": [],
        "nextCursor": "c",
    }
    other = {"id": 1, "result": {}}
    assert drop_tools(other) is other


def test_ids_in_flight_as_the_upstream_tells_them_apart() -> None:
    assert id_key(1) == id_key("1")  # the Python SDK keys its streams by str(id)
    long_id = "x" * 10_000
    assert len(id_key(long_id)) == 16  # bounded: a digest
    in_flight = InFlightIds()
    keys = in_flight.claim([req(1)])
    with pytest.raises(InvalidRequest) as info:
        in_flight.claim([req("1")])
    assert (info.value.status, info.value.code, info.value.reason) == (400, -32600, "duplicate_request_id")
    in_flight.release_keys(keys)
    in_flight.claim([req("1")])
    in_flight.release(1)
    assert len(in_flight) == 0


def test_session_ids_are_held_while_their_request_is_answered() -> None:
    registry = SessionInFlight()
    release = registry.claim("srv", "s1", [req(7), Envelope(Kind.NOTIFICATION, None, "notifications/x")])
    assert release is not None
    with pytest.raises(InvalidRequest):
        registry.claim("srv", "s1", [req(7)])
    other = registry.claim("srv", "s2", [req(7)])  # another session: its own ids
    assert other is not None
    release()
    again = registry.claim("srv", "s1", [req(7)])
    assert again is not None
    again()
    other()
    assert len(registry) == 0
    assert registry.claim("srv", "s1", [Envelope(Kind.RESPONSE, 7)]) is None  # responses are the caller's own


def test_a_batch_repeating_an_id_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        distinct_ids([req(1), req(1, "tools/list")])
    distinct_ids([req(1), req(2), Envelope(Kind.NOTIFICATION, None, "notifications/x")])


def test_filtered_output_is_compact_json() -> None:
    out = filter_bytes(hide_secret, orjson.dumps({"id": 1, "result": {"tools": TOOLS}}))
    assert out == b'{"id":1,"result":{"tools":[{"name":"echo"}]}}'
