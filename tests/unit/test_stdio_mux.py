"""JSON-RPC multiplexing over one stdio process (gateway/upstream/stdio/mux.py): ids and progress tokens remapped so
two clients cannot collide, cancellations limited to the client's own requests, routing of what the process sends
on its own, and failure of everything in flight when it exits."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import UPSTREAM_TIMEOUT, UPSTREAM_UNAVAILABLE
from gateway.policy.stdio import StdioPolicy
from gateway.upstream.stdio.mux import MAX_BACKLOG, MAX_QUEUED, Channel, Exchange, Mux

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


async def test_a_client_behind_by_more_than_its_bytes_is_cut_off() -> None:
    mux = Mux(shared=False)
    ch = Channel("s", limit=1000)
    mux.channels.add(ch)
    post = ch.exchange()
    mux.outgoing_request(ch, post, _call(1, token="t"))
    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}}
    for _ in range(3):
        mux.incoming(progress, 300)
    assert post.queued_bytes == 900 and not post.closed
    # read one: its bytes are free again
    assert await post.next() is not None
    assert post.queued_bytes == 600
    mux.incoming(progress, 300)
    assert post.queued_bytes == 900
    # one more would pass the limit: the client is cut off, what was queued is let go
    mux.incoming(progress, 300)
    assert post.overflowed and post.closed and not post.queue and post.queued_bytes == 0
    assert await post.next() is None
    # its request is still the process's to cancel (the relay's release does it)
    assert [c["params"]["requestId"] for c in mux.cancel_exchange(post, "gone")] == [1]


async def test_the_message_count_still_cuts_off_small_messages() -> None:
    ex = Exchange(limit=10**9)
    for i in range(MAX_QUEUED):
        ex.put({"n": i}, 1)
    assert not ex.overflowed
    ex.put({"n": MAX_QUEUED}, 1)
    assert ex.overflowed and ex.closed


async def test_the_backlog_for_a_stream_not_yet_open_is_bounded_in_bytes() -> None:
    mux = Mux(shared=False)
    ch = Channel("s", limit=1000)
    mux.channels.add(ch)
    for i in range(10):
        mux.incoming({"jsonrpc": "2.0", "method": "notifications/message", "params": {"n": i}}, 300)
    stream = ch.open_stream()
    assert stream is not None
    held = await _drain(stream)
    # the newest three fit in 1000 bytes; the older ones were dropped as they came
    assert [m["params"]["n"] for m in held] == [7, 8, 9]
    assert not stream.overflowed


async def test_a_batch_line_is_shared_among_its_messages() -> None:
    mux = Mux(shared=False)
    ch = Channel("s", limit=1000)
    mux.channels.add(ch)
    post = ch.exchange()
    mux.outgoing_request(ch, post, _call("a"))
    mux.outgoing_request(ch, post, _call("b"))
    mux.incoming([{"jsonrpc": "2.0", "id": 1, "result": {}}, {"jsonrpc": "2.0", "id": 2, "result": {}}], 900)
    assert post.queued_bytes == 900 and not post.overflowed
    assert [m["id"] for m in await _drain(post)] == ["a", "b"]


def test_the_policy_keeps_room_for_one_message() -> None:
    base = {"command": "/bin/true"}
    with pytest.raises(ValueError, match="max_queued_bytes must be at least max_message_bytes"):
        StdioPolicy.model_validate({**base, "max_message_bytes": 2048, "max_queued_bytes": 1024})
    assert StdioPolicy.model_validate(base).max_queued_bytes >= StdioPolicy.model_validate(base).max_message_bytes
