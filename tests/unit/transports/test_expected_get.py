"""Which `initialize` makes the gateway expect a session's GET stream (gateway/transports/order.py): a client that
declared it can be asked a question a call causes (sampling, elicitation), not one that only lists roots."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.testing import context, rpc, tool_call
from gateway.transports.streamable import _answers_server_requests

pytestmark = pytest.mark.unit


def initialize(capabilities: Any) -> dict[str, Any]:
    info = {"name": "t", "version": "1"}
    return rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": capabilities, "clientInfo": info})


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
    assert _answers_server_requests(context("example", initialize(capabilities))) is expected


def test_only_a_request_waits_for_the_expected_get() -> None:
    """The POST waits when its message `has_requests` (gateway/jsonrpc.py): not for notifications or answers."""
    note = rpc("notifications/initialized", rpc_id=None)
    answer = {"jsonrpc": "2.0", "id": "s-1", "result": {}}

    def waits(*messages: dict[str, Any]) -> bool:
        message = context("example", *messages).message
        return message is not None and message.has_requests

    assert waits(tool_call("x", rpc_id=2))
    assert not waits(note) and not waits(answer)
    assert waits(note, tool_call("x", rpc_id=2))  # a 2025-03-26 batch with a request
