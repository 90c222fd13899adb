"""JSON-RPC multiplexing over one stdio process (gateway/upstream/stdio/mux.py): ids and progress tokens remapped so
two clients cannot collide, cancellations limited to the client's own requests, routing of what the process sends
on its own, and failure of everything in flight when it exits."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import UPSTREAM_TIMEOUT, UPSTREAM_UNAVAILABLE
from gateway.upstream.stdio.mux import MAX_BACKLOG, Channel, Exchange, Mux

pytestmark = pytest.mark.unit


def _call(rpc_id: Any, token: Any = None) -> dict[str, Any]:
    params: dict[str, Any] = {"name": "t", "arguments": {}}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": params}


async def _drain(ex: Exchange) -> list[dict[str, Any]]:
    out = []
    while ex.queue:
        msg = await ex.next()
        assert msg is not None
        out.append(msg)
    return out


async def test_shared_process_keeps_equal_client_ids_and_tokens_apart() -> None:
    mux = Mux(shared=True)
    a, b = Channel("a"), Channel("b")
    mux.channels |= {a, b}
    ex_a, ex_b = Exchange(), Exchange()
    out_a = mux.outgoing_request(a, ex_a, _call(1, token="tok"))
    out_b = mux.outgoing_request(b, ex_b, _call(1, token="tok"))
    # the process sees two distinct ids and tokens
    assert out_a["id"] != out_b["id"]
    assert out_a["params"]["_meta"]["progressToken"] != out_b["params"]["_meta"]["progressToken"]
    assert out_a["params"]["arguments"] == {}  # the rest of the message is unchanged
    # progress for b's token reaches b only, with b's own token
    mux.incoming(
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": out_b["id"], "progress": 1}}
    )
    assert await _drain(ex_a) == []
    assert (await _drain(ex_b))[0]["params"]["progressToken"] == "tok"
    # answers come back with each client's own id, to its own exchange
    mux.incoming({"jsonrpc": "2.0", "id": out_a["id"], "result": {"who": "a"}})
    mux.incoming({"jsonrpc": "2.0", "id": out_b["id"], "result": {"who": "b"}})
    assert await _drain(ex_a) == [{"jsonrpc": "2.0", "id": 1, "result": {"who": "a"}}]
    assert await _drain(ex_b) == [{"jsonrpc": "2.0", "id": 1, "result": {"who": "b"}}]
    assert ex_a.done and ex_b.done
    assert mux.in_flight == 0


async def test_cancel_reaches_only_the_clients_own_request() -> None:
    mux = Mux(shared=True)
    a, b = Channel("a"), Channel("b")
    ex_a = Exchange()
    out_a = mux.outgoing_request(a, ex_a, _call(7))
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}}
    # b has no request 7 in flight: its cancel never reaches the process
    assert mux.outgoing_notification(b, cancel) is None
    sent = mux.outgoing_notification(a, cancel)
    assert sent is not None and sent["params"]["requestId"] == out_a["id"]
    # the cancelled request is no longer awaited: the exchange is done
    assert ex_a.done
    # a late answer to it goes nowhere
    mux.incoming({"jsonrpc": "2.0", "id": out_a["id"], "result": {}})
    assert await _drain(ex_a) == []


async def test_shared_process_refuses_server_requests_and_broadcasts_only_list_changes() -> None:
    mux = Mux(shared=True)
    a, b = Channel("a"), Channel("b")
    mux.channels |= {a, b}
    sa, sb = a.open_stream(), b.open_stream()
    assert sa is not None and sb is not None
    replies = mux.incoming({"jsonrpc": "2.0", "id": 5, "method": "sampling/createMessage", "params": {}})
    assert replies and replies[0]["id"] == 5 and replies[0]["error"]["code"] == -32601
    assert mux.incoming({"jsonrpc": "2.0", "id": 6, "method": "ping"}) == [{"jsonrpc": "2.0", "id": 6, "result": {}}]
    mux.incoming({"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "about someone"}})
    mux.incoming({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    assert [m["method"] for m in await _drain(sa)] == ["notifications/tools/list_changed"]
    assert [m["method"] for m in await _drain(sb)] == ["notifications/tools/list_changed"]
    # the gateway initialized a shared process itself: a client's initialized never reaches it
    assert mux.outgoing_notification(a, {"jsonrpc": "2.0", "method": "notifications/initialized"}) is None


async def test_per_session_routing_of_server_messages() -> None:
    mux = Mux(shared=False)
    ch = Channel("s")
    mux.channels.add(ch)
    # nothing open: held for the GET stream (bounded)
    for i in range(MAX_BACKLOG + 5):
        mux.incoming({"jsonrpc": "2.0", "method": "notifications/message", "params": {"n": i}})
    stream = ch.open_stream()
    assert stream is not None
    held = await _drain(stream)
    assert len(held) == MAX_BACKLOG and held[-1]["params"]["n"] == MAX_BACKLOG + 4
    assert ch.open_stream() is None  # one GET stream at a time
    # exactly one POST in flight: a server request goes to it (it most likely caused it)
    post = Exchange()
    ch.exchanges.append(post)
    mux.outgoing_request(ch, post, _call(1))
    mux.incoming({"jsonrpc": "2.0", "id": 99, "method": "elicitation/create", "params": {}})
    assert [m["id"] for m in await _drain(post)] == [99]
    # the client's answer to it reaches the process once; an answer to anything else does not
    assert mux.outgoing_response(ch, {"jsonrpc": "2.0", "id": 99, "result": {}}) is not None
    assert mux.outgoing_response(ch, {"jsonrpc": "2.0", "id": 99, "result": {}}) is None
    # two POSTs in flight: the GET stream
    post2 = Exchange()
    ch.exchanges.append(post2)
    mux.incoming({"jsonrpc": "2.0", "id": 100, "method": "roots/list"})
    assert [m["id"] for m in await _drain(stream)] == [100]


async def test_exit_fails_everything_in_flight_with_the_clients_ids() -> None:
    mux = Mux(shared=False)
    ch = Channel("s")
    mux.channels.add(ch)
    stream = ch.open_stream()
    assert stream is not None
    ex = Exchange()
    mux.outgoing_request(ch, ex, _call("abc"))
    _, fut = mux.internal_request("ping")
    mux.fail("upstream_process_exited", "gone")
    (err,) = await _drain(ex)
    assert err["id"] == "abc"
    assert err["error"]["code"] == UPSTREAM_UNAVAILABLE
    assert err["error"]["data"] == {"reason": "upstream_process_exited"}
    assert ex.failure == "upstream_process_exited" and ex.done
    assert fut.done() and isinstance(fut.exception(), ConnectionResetError)
    assert await stream.next() is None  # the GET stream ends


async def test_expire_answers_the_unanswered_and_cancels_them() -> None:
    mux = Mux(shared=False)
    ch = Channel("s")
    ex = Exchange()
    out = mux.outgoing_request(ch, ex, _call(3))
    errors, cancels = mux.expire(ex)
    assert errors == [
        {
            "jsonrpc": "2.0",
            "id": 3,
            "error": {
                "code": UPSTREAM_TIMEOUT,
                "message": "the stdio server did not answer in time",
                "data": {"reason": "upstream_timeout"},
            },
        }
    ]
    assert cancels[0]["params"]["requestId"] == out["id"]
    assert ex.done and mux.in_flight == 0
