"""WebSocket through the gateway: the SDK's websocket client against the SDK's WebSocket server transport."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import warnings
from typing import Any

import aiohttp
import pytest
from mcp import ClientSession, McpError
from websockets.asyncio.client import connect as ws_connect

from tests.harness import PYTHON, Gateway, Proc, free_port, running, start_gateway, wait_port

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mcp.client.websocket as sdk_ws

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

KEYS = {
    "rw": {"tenant": "acme", "scopes": ["read", "write"]},
    "ro": {"tenant": "acme", "scopes": ["read"]},
    # `test/close` is an extension notification: the scope table gives such methods to admin only
    "adm": {"tenant": "acme", "scopes": ["read", "write", "admin"]},
}


def _policies(port: int) -> dict[str, Any]:
    ws = {"owner": "acme", "transport": "websocket"}
    return {
        "servers.yaml": {
            "servers": {
                "ws": {**ws, "upstreams": [{"url": f"ws://127.0.0.1:{port}/ws"}]},
                "raw": {**ws, "upstreams": [{"url": f"ws://127.0.0.1:{port}/raw"}]},
            }
        },
        "tenants.yaml": {"tenants": {"acme": {"servers": ["ws", "raw"]}}},
        "keys.yaml": {"keys": []},
        "limits.yaml": {},
        "access.yaml": {"rules": []},
    }


@pytest.fixture(scope="module")
def ws_env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp_path = tmp_path_factory.mktemp("ws")
    port = free_port()
    up = Proc([PYTHON, "-m", "tests.upstreams.ws_server", "--port", str(port)], tmp_path / "ws-upstream.log").start()
    wait_port(port, proc=up.popen, log=up.log)
    gw = start_gateway(tmp_path / "gw", _policies(port), keys=KEYS, config={"http": {"ws_heartbeat_seconds": 0.5}})
    with running(gw, up):
        yield gw, port


def _ws_url(gw: Gateway, server: str) -> str:
    return gw.url(server).replace("http://", "ws://")


def _sdk_client(gw: Gateway, server: str, key: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    # the SDK client takes no headers; credentials go in the upgrade request (never in the query)
    monkeypatch.setattr(sdk_ws, "ws_connect", functools.partial(ws_connect, additional_headers=gw.auth(key)))
    return sdk_ws.websocket_client(_ws_url(gw, server))


async def test_sdk_websocket_client_end_to_end(ws_env: tuple[Gateway, int], monkeypatch: pytest.MonkeyPatch) -> None:
    gw, _ = ws_env
    progress: list[float] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)

    async with _sdk_client(gw, "ws", "rw", monkeypatch) as (r, w), ClientSession(r, w) as s:
        init = await s.initialize()
        assert init.serverInfo.name == "example"
        assert "add" in {t.name for t in (await s.list_tools()).tools}
        res = await s.call_tool("add", {"a": 2, "b": 40})
        assert res.content[0].text == "42"  # type: ignore[union-attr]
        res = await s.call_tool("count", {"n": 3, "delay": 0.05}, progress_callback=on_progress)
        assert res.content[0].text == "counted to 3"  # type: ignore[union-attr]
        assert progress == [1, 2, 3]


async def test_refused_message_gets_error_frame_and_socket_stays_open(
    ws_env: tuple[Gateway, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, _ = ws_env
    before = await _counts(gw)
    async with _sdk_client(gw, "ws", "ro", monkeypatch) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        with pytest.raises(McpError) as info:
            await asyncio.wait_for(s.call_tool("add", {"a": 1, "b": 2}), 10)
        assert info.value.error.code == -31403
        assert info.value.error.data["reason"] == "scope_denied"  # type: ignore[index]
        # the same socket still serves what the key may do: a list, of the tools it may call (none: read-only)
        tools = await asyncio.wait_for(s.list_tools(), 10)
        assert tools.tools == []
        # and the upstream still answers on it: an empty list is also what a broken filter would show
        assert (await asyncio.wait_for(s.list_prompts(), 10)).prompts
    # every message went through the chain on its own: observers (metrics here) saw each one
    after = await _counts(gw)
    assert after[("tools/call", "403")] - before.get(("tools/call", "403"), 0) == 1
    assert after[("tools/list", "200")] - before.get(("tools/list", "200"), 0) == 1
    assert after[("initialize", "200")] - before.get(("initialize", "200"), 0) == 1


async def _counts(gw: Gateway) -> dict[tuple[str, str], float]:
    """mcp_gateway_requests_total of server `ws`, by (method, status)."""
    async with aiohttp.ClientSession() as http, http.get(f"{gw.base}/metrics") as r:
        text = await r.text()
    pattern = r'^mcp_gateway_requests_total\{method="([^"]+)",server="ws",status="(\d+)"\} (\S+)$'
    return {(m, st): float(v) for m, st, v in re.findall(pattern, text, re.M)}


async def test_upgrade_needs_credentials(ws_env: tuple[Gateway, int]) -> None:
    gw, _ = ws_env
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(_ws_url(gw, "ws"), protocols=("mcp",))
        assert info.value.status == 401
        r = await http.get(gw.url("ws"), headers=gw.auth("rw"))
        assert r.status == 426


async def test_close_codes_cross_both_ways(ws_env: tuple[Gateway, int]) -> None:
    gw, port = ws_env
    async with aiohttp.ClientSession() as http:
        # upstream -> client
        ws = await http.ws_connect(_ws_url(gw, "raw"), protocols=("mcp",), headers=gw.auth("adm"))
        assert ws.protocol == "mcp"
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "method": "notifications/x", "params": {"v": 1}}))
        echoed = await ws.receive(timeout=10)
        assert json.loads(echoed.data)["params"] == {"v": 1}
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "method": "test/close", "params": {"code": 4001}}))
        msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4001

        # client -> upstream
        ws = await http.ws_connect(_ws_url(gw, "raw"), protocols=("mcp",), headers=gw.auth("rw"))
        await ws.close(code=4002)
        codes: list[int] = []
        for _ in range(100):
            async with http.get(f"http://127.0.0.1:{port}/closes") as r:
                codes = [e["code"] for e in await r.json() if e["event"] == "close"]
            if 4002 in codes:
                break
            await asyncio.sleep(0.05)
        assert 4002 in codes
        async with http.get(f"http://127.0.0.1:{port}/closes") as r:
            opened = [e for e in await r.json() if e["event"] == "open"]
        assert opened and all(e["authorization"] is None for e in opened), "client credentials must not go upstream"


async def test_gateway_pings_idle_client(ws_env: tuple[Gateway, int]) -> None:
    gw, _ = ws_env
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(_ws_url(gw, "raw"), protocols=("mcp",), headers=gw.auth("rw"), autoping=False)
        msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.PING
        await ws.pong(msg.data)
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "method": "notifications/x"}))
        while True:
            msg = await ws.receive(timeout=10)
            if msg.type is aiohttp.WSMsgType.PING:
                await ws.pong(msg.data)
                continue
            break
        assert msg.type is aiohttp.WSMsgType.TEXT
        await ws.close()
