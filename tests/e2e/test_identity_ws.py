"""Identity on a WebSocket route (authenticated once, at the upgrade): refused upgrades are plain HTTP answers,
tools/list answers on the socket are filtered, a denied tool call is answered on the socket, and a key that
expires while the socket is open stops working at its next message."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness import running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


async def _ask(ws: aiohttp.ClientWebSocketResponse, msg: dict[str, Any]) -> dict[str, Any]:
    await ws.send_str(json.dumps(msg))
    async with asyncio.timeout(15):
        while True:
            frame = await ws.receive()
            assert frame.type == aiohttp.WSMsgType.TEXT, frame
            answer: dict[str, Any] = json.loads(frame.data)
            if answer.get("id") == msg["id"]:
                return answer


async def test_websocket_identity(tmp_path: Path) -> None:
    up = start_upstream(tmp_path, module="tests.upstreams.ws_server")
    expires = datetime.now(UTC) + timedelta(seconds=8)
    policies: dict[str, Any] = {
        "servers.yaml": {
            "servers": {"ws": {"upstreams": [{"url": f"ws://127.0.0.1:{up.port}/ws"}], "transport": "websocket"}}
        },
        "tenants.yaml": {"tenants": {"acme": {"servers": ["ws"], "tools": {"deny": ["secret_*"]}}}},
        "keys.yaml": {"keys": []},
        "limits.yaml": {"ddos": {"enabled": False}, "tiers": {}},
        "access.yaml": {"rules": []},
    }
    keys = {
        "ro": {"tenant": "acme", "scopes": ["read"]},
        "short": {"tenant": "acme", "scopes": ["read", "write"], "expires_at": expires.isoformat()},
    }
    gw = start_gateway(tmp_path / "gw", policies, keys=keys)
    url = gw.url("ws").replace("http://", "ws://")
    with running(gw, up):
        async with aiohttp.ClientSession() as http:
            # a refused upgrade is an HTTP answer with the JSON-RPC error body
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(url, protocols=("mcp",))
            assert info.value.status == 401

            async with http.ws_connect(url, protocols=("mcp",), headers=gw.auth("short")) as ws:
                assert (await _ask(ws, INIT))["result"]["serverInfo"]["name"] == "example"
                await ws.send_str(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
                listed = await _ask(ws, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
                names = {t["name"] for t in listed["result"]["tools"]}
                assert "add" in names and "secret_admin_tool" not in names
                denied = await _ask(
                    ws,
                    {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "secret_admin_tool"}},
                )
                assert (denied["error"]["code"], denied["error"]["data"]["reason"]) == (-31403, "tool_denied")
                # the key expires while the socket stays open: the next message is refused on the socket
                await asyncio.sleep(max(0.0, expires.timestamp() - time.time()) + 0.2)
                late = await _ask(ws, {"jsonrpc": "2.0", "id": 4, "method": "tools/list"})
                assert (late["error"]["code"], late["error"]["data"]["reason"]) == (-31001, "credential_expired")

            async with http.ws_connect(url, protocols=("mcp",), headers=gw.auth("ro")) as ws:
                await _ask(ws, INIT)
                call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "add"}}
                refused = await _ask(ws, call)
                assert (refused["error"]["code"], refused["error"]["data"]["reason"]) == (-31403, "scope_denied")
