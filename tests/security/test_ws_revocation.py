"""A WebSocket authenticates once, at the upgrade: a key revoked afterwards must not keep working on a socket that
was opened before. Each frame re-checks the key against the keys in force (keys.yaml's of the current snapshot;
PostgreSQL's as cached, refreshed when stale); a frame of a revoked key gets the refusal and the socket is closed
with 1008 (policy violation). Another key's socket is untouched."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from tests.harness import Gateway, Upstream, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e

INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Gateway, Upstream]]:
    up = start_upstream(tmp_path, module="tests.upstreams.ws_server")
    policies = {
        "servers.yaml": {
            "servers": {"ws": {"upstreams": [{"url": f"ws://127.0.0.1:{up.port}/ws"}], "transport": "websocket"}}
        },
        "tenants.yaml": {"tenants": {"acme": {"servers": ["ws"]}}},
        "limits.yaml": {},
        "access.yaml": {"rules": []},
    }
    keys = {"alice": {"tenant": "acme", "scopes": ["read", "write"]}, "bob": {"tenant": "acme", "scopes": ["read"]}}
    gw = start_gateway(tmp_path / "gw", policies, keys=keys)
    with running(gw, up):
        yield gw, up


async def _call(ws: aiohttp.ClientWebSocketResponse, rpc_id: int, method: str, params: Any = None) -> Any:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rpc_id, "method": method}
    if params is not None:
        msg["params"] = params
    await ws.send_str(orjson.dumps(msg).decode())
    while True:
        frame = await asyncio.wait_for(ws.receive(), 10)
        if frame.type is not aiohttp.WSMsgType.TEXT:
            return frame
        data = orjson.loads(frame.data)
        if data.get("id") == rpc_id:
            return data


async def _open(http: aiohttp.ClientSession, gw: Gateway, key: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(gw.url("ws").replace("http://", "ws://"), protocols=("mcp",), headers=gw.auth(key))
    assert "result" in await _call(ws, 0, "initialize", INIT["params"])
    await ws.send_str(orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).decode())
    return ws


def _revoke_in_file(gw: Gateway, key_id: str) -> None:
    path = gw.policies_dir / "keys.yaml"
    doc = yaml.safe_load(path.read_text())
    for entry in doc["keys"]:
        if entry["id"] == key_id:
            entry["revoked"] = True
    gw.write_policies({"keys.yaml": doc})


async def _refused_over_http(http: aiohttp.ClientSession, gw: Gateway, key: str) -> bool:
    async with http.post(
        gw.url("ws"),
        json=INIT,
        headers={**gw.auth(key), "Accept": "application/json, text/event-stream"},
    ) as r:
        return r.status == 401


async def test_a_socket_of_a_key_revoked_after_the_upgrade_is_refused_and_closed(
    env: tuple[Gateway, Upstream],
) -> None:
    gw, _ = env
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())
        alice = await _open(http, gw, "alice")
        bob = await _open(http, gw, "bob")
        assert "result" in await _call(alice, 1, "tools/list")
        _revoke_in_file(gw, "alice")
        for _ in range(100):  # until the reload is in force (a new request of the key is refused)
            if await _refused_over_http(http, gw, "alice"):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the revocation was never loaded")
        answer = await _call(alice, 2, "tools/list")
        assert answer["error"]["data"]["reason"] == "key_revoked", answer
        closing = await asyncio.wait_for(alice.receive(), 10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert alice.close_code == 1008
        # the other key's socket goes on
        assert "result" in await _call(bob, 3, "tools/list")
        await bob.close()
    # the refusal on the socket is audited (the writer is paced: wait for the record)
    for _ in range(100):
        lines = (gw.workdir / "audit.jsonl").read_bytes().splitlines()
        audit = [orjson.loads(line) for line in lines if line.strip()]
        refused = [r for r in audit if r.get("key_id") == "alice" and r.get("reason") == "key_revoked"]
        if any(r["transport"] == "websocket" and r["http_status"] == 401 for r in refused):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail(f"no audit record of the refused frame: {refused}")


async def test_an_idle_socket_of_a_revoked_key_stops_receiving_server_messages(
    env: tuple[Gateway, Upstream],
) -> None:
    """The client sends nothing after the revocation (no frame to refuse): the server's progress notifications of a
    call made before it must stop all the same, the socket closed with 1008 before the call's answer (red team)."""
    gw, _ = env
    async with aiohttp.ClientSession() as http:
        alice = await _open(http, gw, "alice")
        call = {
            "jsonrpc": "2.0",
            "id": 5,
            "method": "tools/call",
            "params": {"name": "count", "arguments": {"n": 400, "delay": 0.05}, "_meta": {"progressToken": "p"}},
        }
        await alice.send_str(orjson.dumps(call).decode())
        first = orjson.loads((await asyncio.wait_for(alice.receive(), 10)).data)
        assert first["method"] == "notifications/progress", first
        _revoke_in_file(gw, "alice")
        for _ in range(100):
            if await _refused_over_http(http, gw, "alice"):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the revocation was never loaded")
        async with asyncio.timeout(15):  # a hang guard: the call itself would run 20 s
            while True:
                frame = await alice.receive()
                if frame.type is not aiohttp.WSMsgType.TEXT:
                    break
                assert orjson.loads(frame.data).get("id") != 5, "the call's answer reached a revoked key's socket"
        # the gateway's close frame, as sent: closing from the upstream pump while the client pump is reading, aiohttp
        # does not wait for the client's reply, so the client's own close handshake may end abnormally (1006)
        assert (frame.type, frame.data, frame.extra) == (aiohttp.WSMsgType.CLOSE, 1008, "credential no longer valid")
