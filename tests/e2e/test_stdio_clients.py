"""WebSocket and legacy HTTP+SSE clients of `transport: stdio` routes, driven by the official MCP Python SDK's
WebSocket and SSE clients.

WebSocket: a process per socket (per_session) or a channel of the shared process, every frame through the chain (a
refusal is an error frame, the socket stays open), progress and elicitation over the socket, the process gone with
the socket, a crash closing the socket with 1011. Legacy HTTP+SSE (`/mcp/<server>/sse`): the stream is the session
(its process starts with it and ends with it), answers, progress and elicitation on the stream, a refusal as the
error on the stream (the session goes on)."""

from __future__ import annotations

import asyncio
import functools
import json
import warnings
from typing import Any

import aiohttp
import psutil
import pytest
from mcp import ClientSession, McpError, types
from mcp.client.sse import sse_client
from websockets.asyncio.client import connect as ws_connect

from tests.e2e.test_stdio import eventually, stdio_server, text_of
from tests.harness import Gateway, running, start_gateway

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mcp.client.websocket as sdk_ws

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("stdio-ws")
    servers = {"tools": stdio_server("ws-tools"), "shared": stdio_server("ws-shared", process="shared")}
    policies = {
        "servers.yaml": {"servers": servers},
        "tenants.yaml": {"tenants": {"acme": {"servers": list(servers)}}},
        "keys.yaml": {"keys": []},
        "limits.yaml": {},
        "access.yaml": {"rules": []},
    }
    keys = {"k": {"tenant": "acme", "scopes": ["read", "write"]}, "reader": {"tenant": "acme", "scopes": ["read"]}}
    gateway = start_gateway(tmp / "gw", policies, keys=keys)
    with running(gateway):
        yield gateway


def _client(gw: Gateway, server: str, key: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(sdk_ws, "ws_connect", functools.partial(ws_connect, additional_headers=gw.auth(key)))
    return sdk_ws.websocket_client(gw.url(server).replace("http://", "ws://"))


async def test_websocket_client_reaches_a_stdio_server(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    progress: list[float] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)

    async def elicit(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"confirmed": True})

    async with (
        _client(gw, "tools", "k", monkeypatch) as (r, w),
        ClientSession(r, w, elicitation_callback=elicit) as s,
    ):
        init = await asyncio.wait_for(s.initialize(), 30)
        assert init.serverInfo.name == "ws-tools"
        assert "add" in {t.name for t in (await s.list_tools()).tools}
        assert text_of(await s.call_tool("add", {"a": 2, "b": 40})) == "42"
        res = await s.call_tool("count", {"n": 3, "delay": 0.05}, progress_callback=on_progress)
        assert text_of(res) == "counted to 3" and progress == [1, 2, 3]
        assert text_of(await s.call_tool("confirm_action", {"action": "ship"})) == "ship: confirmed"
        pid = json.loads(text_of(await s.call_tool("whoami", {})))["pid"]
    await eventually(lambda: not psutil.pid_exists(pid), "the socket's process ended with the socket")


async def test_refusal_is_an_error_frame_and_the_socket_stays(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    async with _client(gw, "tools", "reader", monkeypatch) as (r, w), ClientSession(r, w) as s:
        await asyncio.wait_for(s.initialize(), 30)
        with pytest.raises(McpError) as err:
            await asyncio.wait_for(s.call_tool("add", {"a": 1, "b": 2}), 10)
        assert err.value.error.code == -31403
        # the session goes on: its list holds only what the key may call (no write tool)
        assert "add" not in {t.name for t in (await asyncio.wait_for(s.list_tools(), 10)).tools}
        await asyncio.wait_for(s.send_ping(), 10)


async def test_shared_process_over_websocket(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    async def pid() -> int:
        async with _client(gw, "shared", "k", monkeypatch) as (r, w), ClientSession(r, w) as s:
            await asyncio.wait_for(s.initialize(), 30)
            return int(json.loads(text_of(await s.call_tool("whoami", {})))["pid"])

    a, b = await asyncio.gather(pid(), pid())
    assert a == b and psutil.pid_exists(a)


async def test_crash_closes_the_socket_with_1011(gw: Gateway) -> None:
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
    }
    url = gw.url("tools").replace("http://", "ws://")
    async with ws_connect(url, subprotocols=["mcp"], additional_headers=gw.auth("k")) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps(init))
        assert json.loads(await ws.recv())["id"] == 1
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "crash"}}))
        answer = json.loads(await ws.recv())
        assert answer["id"] == 2 and answer["error"]["data"]["reason"] == "upstream_process_exited"
        await ws.wait_closed()
        assert ws.close_code == 1011


async def test_legacy_sse_client_reaches_a_stdio_server(gw: Gateway) -> None:
    progress: list[float] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)

    async def elicit(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"confirmed": True})

    async with (
        sse_client(gw.url("tools") + "/sse", headers=gw.auth("k")) as (r, w),
        ClientSession(r, w, elicitation_callback=elicit) as s,
    ):
        init = await asyncio.wait_for(s.initialize(), 30)
        assert init.serverInfo.name == "ws-tools"
        assert "add" in {t.name for t in (await s.list_tools()).tools}
        assert text_of(await asyncio.wait_for(s.call_tool("add", {"a": 2, "b": 40}), 30)) == "42"
        res = await asyncio.wait_for(s.call_tool("count", {"n": 3, "delay": 0.05}, progress_callback=on_progress), 30)
        assert text_of(res) == "counted to 3" and progress == [1, 2, 3]
        assert text_of(await asyncio.wait_for(s.call_tool("confirm_action", {"action": "go"}), 30)) == "go: confirmed"
        pid = json.loads(text_of(await s.call_tool("whoami", {})))["pid"]
    await eventually(lambda: not psutil.pid_exists(pid), "the stream's process ended with the stream")


async def test_legacy_sse_refusal_keeps_the_session(gw: Gateway) -> None:
    async with (
        sse_client(gw.url("shared") + "/sse", headers=gw.auth("reader")) as (r, w),
        ClientSession(r, w) as s,
    ):
        await asyncio.wait_for(s.initialize(), 30)
        with pytest.raises(McpError) as err:
            await asyncio.wait_for(s.call_tool("add", {"a": 1, "b": 2}), 10)
        assert err.value.error.code == -31403
        # the session goes on: its list holds only what the key may call (no write tool)
        assert "add" not in {t.name for t in (await asyncio.wait_for(s.list_tools(), 10)).tools}
        await asyncio.wait_for(s.send_ping(), 10)


async def test_legacy_post_to_another_callers_session_is_refused(gw: Gateway) -> None:
    ping = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(gw.url("tools") + "/sse", headers={**gw.auth("k"), "Accept": "text/event-stream"}) as stream,
    ):
        assert stream.status == 200
        line = await stream.content.readline()
        while not line.startswith(b"data:"):
            line = await stream.content.readline()
        endpoint = line[5:].strip().decode()
        assert endpoint.startswith("/mcp/tools/messages/?session_id=")
        url = gw.base + endpoint
        # another key of the same tenant presenting the session's URL: refused like an unknown session
        async with http.post(url, json=ping, headers=gw.auth("reader")) as r:
            assert r.status == 404
        async with http.post(url, json=ping, headers=gw.auth("k")) as r:
            assert r.status == 202
        line = await stream.content.readline()
        while not line.startswith(b"data:"):
            line = await stream.content.readline()
        assert json.loads(line[5:]) == {"jsonrpc": "2.0", "id": 9, "result": {}}
