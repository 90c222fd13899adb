"""The stdio forward step (gateway/upstream/stdio/forwarder.py) over a stand-in process: a JSON answer when the
answer comes first, an event stream when progress comes first, `notifications/cancelled` for what a client that
leaves leaves unanswered, the first-byte timeout, a crash before the first message (refused, reported as `reset`)
and after it (the stream's last event), and the breaker outcome of a stream reported when it ends. The real process
is covered end to end in tests/e2e/test_stdio.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from gateway.context import UpstreamOutcome
from gateway.errors import UpstreamTimeout, UpstreamUnavailable
from gateway.policy.stdio import STDIO_INSTANCE, StdioPolicy
from gateway.testing import context, snapshot, tool_call
from gateway.upstream.stdio.forwarder import StdioForwarder
from gateway.upstream.stdio.manager import Owner, StdioManager, Worker
from gateway.upstream.stdio.metrics import StdioMetrics
from gateway.upstream.stdio.mux import Channel, Mux

pytestmark = pytest.mark.unit

POLICY = StdioPolicy(command="srv")


class FakeProcess:
    """Records what the gateway writes; `reply` decides what the "server" answers to each message."""

    def __init__(self, mux: Mux, reply: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> None:
        self.mux = mux
        self.reply = reply
        self.sent: list[dict[str, Any]] = []
        self.alive = True

    async def send(self, msg: dict[str, Any]) -> None:
        if not self.alive:
            raise ConnectionResetError("gone")
        self.sent.append(msg)
        for out in self.reply(msg):
            asyncio.get_running_loop().call_soon(self.mux.incoming, out)

    async def stop(self) -> None:
        self.alive = False

    def crash(self) -> None:
        self.alive = False
        self.mux.fail("upstream_process_exited", "the stdio server process exited")


def _setup(reply: Callable[[dict[str, Any]], list[dict[str, Any]]], **stdio: Any) -> tuple[Any, ...]:
    manager = StdioManager(StdioMetrics(CollectorRegistry()))
    mux = Mux(shared=False)
    proc = FakeProcess(mux, reply)
    worker = Worker(proc, mux, Owner("tools"), POLICY)  # type: ignore[arg-type]
    channel = Channel("sid")
    manager.add_session("tools", worker, channel, True, POLICY)
    snap = snapshot(
        {"tools": {"transport": "stdio", "owner": "acme", "stdio": {"command": "srv"}, **stdio}},
    )
    return manager, StdioForwarder(manager), proc, snap


def _ctx(snap: Any, *messages: dict[str, Any]) -> Any:
    ctx = context("tools", *messages, snap=snap, session_id="sid")
    outcomes: list[UpstreamOutcome] = []
    ctx.outcome_hooks.append(outcomes.append)
    return ctx, outcomes


def _answer(msg: dict[str, Any], **result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg["id"], "result": result}


async def _read(resp: Any) -> bytes:
    out = b""
    while chunk := await resp.content.readany():
        out += chunk
    return out


async def test_answer_first_is_json_with_the_clients_id() -> None:
    _, fwd, proc, snap = _setup(lambda m: [_answer(m, ok=True)] if "id" in m else [])
    ctx, outcomes = _ctx(snap, tool_call("add", rpc_id=41))
    resp = await fwd.open(ctx, ctx.server, STDIO_INSTANCE, "POST")
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    assert orjson.loads(await _read(resp)) == {"jsonrpc": "2.0", "id": 41, "result": {"ok": True}}
    assert proc.sent[0]["id"] == 1  # the process saw the gateway's own id, not the client's 41
    assert outcomes and outcomes[0].status == 200 and outcomes[0].error is None


async def test_progress_first_is_an_event_stream_and_its_outcome_comes_at_the_end() -> None:
    def reply(m: dict[str, Any]) -> list[dict[str, Any]]:
        if "id" not in m:
            return []
        token = m["params"]["_meta"]["progressToken"]
        note = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": token, "progress": 1}}
        return [note, _answer(m, done=True)]

    _, fwd, _, snap = _setup(reply)
    call = tool_call("count", rpc_id=7)
    call["params"]["_meta"] = {"progressToken": "mine"}
    ctx, outcomes = _ctx(snap, call)
    resp = await fwd.open(ctx, ctx.server, STDIO_INSTANCE, "POST")
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert outcomes == []  # not yet: the answer is still to come
    body = await _read(resp)
    events = [orjson.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert events[0]["params"]["progressToken"] == "mine"
    assert events[1] == {"jsonrpc": "2.0", "id": 7, "result": {"done": True}}
    resp.close()
    assert outcomes[0].status == 200 and outcomes[0].error is None


async def test_a_client_that_leaves_mid_stream_cancels_its_request() -> None:
    def reply(m: dict[str, Any]) -> list[dict[str, Any]]:
        if m.get("method") != "tools/call":
            return []
        token = m["params"]["_meta"]["progressToken"]
        return [{"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": token}}]

    _, fwd, proc, snap = _setup(reply)
    call = tool_call("slow", rpc_id=3)
    call["params"]["_meta"] = {"progressToken": 1}
    ctx, _ = _ctx(snap, call)
    resp = await fwd.open(ctx, ctx.server, STDIO_INSTANCE, "POST")
    assert await resp.content.readany()  # the progress event
    gid = proc.sent[0]["id"]
    resp.close()  # what the relay does when the client's connection goes
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    cancels = [m for m in proc.sent if m.get("method") == "notifications/cancelled"]
    assert cancels and cancels[0]["params"]["requestId"] == gid


async def test_no_answer_within_first_byte_is_a_timeout_and_the_process_is_told() -> None:
    _, fwd, proc, snap = _setup(lambda m: [], timeouts={"first_byte": 0.05})
    ctx, outcomes = _ctx(snap, tool_call("slow", rpc_id=3))
    with pytest.raises(UpstreamTimeout):
        await fwd.open(ctx, ctx.server, STDIO_INSTANCE, "POST")
    assert outcomes[0].error == "timeout"
    await asyncio.sleep(0)
    assert any(m.get("method") == "notifications/cancelled" for m in proc.sent)


async def test_crash_before_the_first_message_is_refused_as_reset() -> None:
    holder: list[FakeProcess] = []

    def reply(m: dict[str, Any]) -> list[dict[str, Any]]:
        asyncio.get_running_loop().call_soon(holder[0].crash)
        return []

    _, fwd, proc, snap = _setup(reply)
    holder.append(proc)
    ctx, outcomes = _ctx(snap, tool_call("crash", rpc_id=3))
    with pytest.raises(UpstreamUnavailable) as err:
        await fwd.open(ctx, ctx.server, STDIO_INSTANCE, "POST")
    assert err.value.reason == "upstream_process_exited"
    assert outcomes[0].error == "reset"


async def test_crash_mid_stream_is_the_streams_last_event_and_a_failure_for_the_breaker() -> None:
    holder: list[FakeProcess] = []

    def reply(m: dict[str, Any]) -> list[dict[str, Any]]:
        token = m["params"]["_meta"]["progressToken"]
        asyncio.get_running_loop().call_later(0.01, holder[0].crash)
        return [{"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": token}}]

    _, fwd, proc, snap = _setup(reply)
    holder.append(proc)
    call = tool_call("crash", rpc_id=9)
    call["params"]["_meta"] = {"progressToken": "t"}
    ctx, outcomes = _ctx(snap, call)
    resp = await fwd.open(ctx, ctx.server, STDIO_INSTANCE, "POST")
    body = await _read(resp)
    last = orjson.loads(body.strip().split(b"\n")[-1][6:])
    assert last["id"] == 9 and last["error"]["data"]["reason"] == "upstream_process_exited"
    resp.close()
    assert outcomes[0].error == "reset" and outcomes[0].status is None


async def test_unknown_session_is_404_and_delete_ends_it() -> None:
    manager, fwd, _, snap = _setup(lambda m: [])
    ctx = context("tools", snap=snap, session_id="other", http_method="DELETE")
    assert (await fwd.open(ctx, ctx.server, STDIO_INSTANCE, "DELETE")).status == 404
    ctx = context("tools", snap=snap, session_id="sid", http_method="DELETE")
    assert (await fwd.open(ctx, ctx.server, STDIO_INSTANCE, "DELETE")).status == 200
    assert manager.session("tools", "sid") is None
