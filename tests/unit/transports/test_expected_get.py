"""Which `initialize` makes the gateway expect a session's GET stream (gateway/transports/order.py): a client that
declared it can be asked a question a call causes (sampling, elicitation), not one that only lists roots."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.context import RequestContext
from gateway.jsonrpc import parse_message
from gateway.transports.streamable import _answers_server_requests, _carries_request

pytestmark = pytest.mark.unit


def ctx(message: Any) -> RequestContext:
    c = RequestContext(
        request_id="r",
        snapshot=None,  # type: ignore[arg-type]
        server_name="s",
        server=None,
        client_ip="127.0.0.1",
        transport="streamable-http",
        http_method="POST",
    )
    c.message = parse_message(orjson.dumps(message))
    return c


def initialize(capabilities: Any) -> dict[str, Any]:
    info = {"name": "t", "version": "1"}
    params = {"protocolVersion": "2025-06-18", "capabilities": capabilities, "clientInfo": info}
    return {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}


@pytest.mark.parametrize(
    ("capabilities", "expected"),
    [
        ({"sampling": {}}, True),
        ({"elicitation": {"form": {}}}, True),
        ({"roots": {"listChanged": True}}, False),  # roots/list is not caused by a POST: holding one would not help
        ({"sampling": None}, False),  # declared null is not declared
        ({"sampling": True}, False),
        ({}, False),
        ("sampling", False),
    ],
)
def test_which_clients_are_expected_to_open_a_get(capabilities: Any, expected: bool) -> None:
    assert _answers_server_requests(ctx(initialize(capabilities))) is expected


def test_only_a_request_waits_for_the_expected_get() -> None:
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "x"}}
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    answer = {"jsonrpc": "2.0", "id": "s-1", "result": {}}
    assert _carries_request(ctx(call))
    assert not _carries_request(ctx(note)) and not _carries_request(ctx(answer))
    assert _carries_request(ctx([note, call]))  # a 2025-03-26 batch with a request in it
