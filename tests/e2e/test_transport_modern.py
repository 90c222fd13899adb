"""MCP 2026-07-28 (stateless) through the gateway: header checks, 405 on modern-only routes, cancellation."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiohttp
import pytest

from tests.harness import PYTHON, Gateway, Proc, free_port, running, start_gateway, wait_port

pytestmark = pytest.mark.e2e

V = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": V,
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


@pytest.fixture(scope="module")
def modern_env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("modern")
    port = free_port()
    up = Proc([PYTHON, "-m", "tests.upstreams.modern_server", "--port", str(port)], tmp / "up.log").start()
    wait_port(port, proc=up.popen, log=up.log)
    base = {"upstreams": [{"url": f"http://127.0.0.1:{port}/mcp"}], "owner": "acme"}
    policies = {
        "servers.yaml": {
            "servers": {"modern": {**base, "eras": "modern"}, "both": base, "old": {**base, "eras": "legacy"}}
        },
        "tenants.yaml": {"tenants": {"acme": {"servers": ["modern", "both", "old"]}}},
        "keys.yaml": {"keys": []},
        "limits.yaml": {},
        "access.yaml": {"rules": []},
    }
    gw = start_gateway(tmp / "gw", policies, keys={"rw": {"tenant": "acme", "scopes": ["read", "write"]}})
    with running(gw, up):
        yield gw, port


def _call(rpc_id: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    params = {"name": tool, "arguments": arguments, "_meta": META}
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": params}


def _headers(gw: Gateway, **extra: str) -> dict[str, str]:
    h = {
        **gw.auth("rw"),
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": V,
        "Mcp-Method": "tools/call",
    }
    h.update(extra)
    return h


async def _post(gw: Gateway, server: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(gw.url(server), json=body, headers=headers) as r:
        return r.status, await r.json(content_type=None)


@pytest.mark.parametrize("server", ["modern", "both"])
async def test_matching_headers_pass_and_reach_upstream_unchanged(modern_env: tuple[Gateway, int], server: str) -> None:
    gw, _ = modern_env
    greeting = "Hello, 世界"
    enc = "=?base64?" + base64.b64encode(greeting.encode()).decode() + "?="
    headers = _headers(gw, **{"Mcp-Name": "echo_headers", "mcp-param-region": "us-west1", "Mcp-Param-Greeting": enc})
    body = _call(1, "echo_headers", {"Region": "us-west1", "greeting": greeting, "count": 3})
    headers["Mcp-Param-Count"] = "3.0"  # integers compare numerically
    status, answer = await _post(gw, server, body, headers)
    assert status == 200, answer
    seen = json.loads(answer["result"]["content"][0]["text"])
    folded = {k.lower(): v for k, v in seen.items()}
    assert folded["mcp-method"] == "tools/call" and folded["mcp-name"] == "echo_headers"
    assert folded["mcp-param-greeting"] == enc and folded["mcp-param-region"] == "us-west1"
    assert folded["mcp-protocol-version"] == V


@pytest.mark.parametrize(
    ("extra", "header"),
    [
        ({"Mcp-Name": "other_tool"}, "Mcp-Name"),
        ({}, "Mcp-Name"),  # required for tools/call, missing
        ({"Mcp-Name": "echo_headers", "Mcp-Method": "tools/list"}, "Mcp-Method"),
        ({"Mcp-Name": "echo_headers", "MCP-Protocol-Version": "2026-12-01"}, "MCP-Protocol-Version"),
        ({"Mcp-Name": "echo_headers", "Mcp-Param-Region": "eu-west1"}, "Mcp-Param-Region"),
        ({"Mcp-Name": "echo_headers", "Mcp-Param-Region": "=?base64?ZXUtd2VzdDE=?="}, "Mcp-Param-Region"),
        ({"Mcp-Name": "echo_headers", "Mcp-Param-Region": "=?base64?!!notbase64?="}, "Mcp-Param-Region"),
    ],
)
async def test_mismatched_or_missing_headers_get_400_header_mismatch(
    modern_env: tuple[Gateway, int], extra: dict[str, str], header: str
) -> None:
    gw, _ = modern_env
    headers = _headers(gw, **extra)
    status, answer = await _post(gw, "both", _call(5, "echo_headers", {"region": "us-west1"}), headers)
    assert status == 400
    assert answer["id"] == 5
    assert answer["error"]["code"] == -32020
    assert answer["error"]["data"]["reason"] in ("header_mismatch", "header_invalid")


async def test_missing_mcp_method_header(modern_env: tuple[Gateway, int]) -> None:
    gw, _ = modern_env
    headers = _headers(gw, **{"Mcp-Name": "echo_headers"})
    del headers["Mcp-Method"]
    status, answer = await _post(gw, "modern", _call(6, "echo_headers", {}), headers)
    assert (status, answer["error"]["code"]) == (400, -32020)


async def test_eras(modern_env: tuple[Gateway, int]) -> None:
    gw, _ = modern_env
    async with aiohttp.ClientSession() as http:
        for method in ("GET", "DELETE"):
            async with http.request(method, gw.url("modern"), headers=gw.auth("rw")) as r:
                assert r.status == 405
                assert r.headers["Allow"] == "POST"
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "x", "version": "0"}},
    }
    status, answer = await _post(gw, "modern", init, {**gw.auth("rw"), "Accept": "application/json"})
    assert (status, answer["error"]["code"]) == (400, -32602)
    headers = _headers(gw, **{"Mcp-Name": "echo_headers"})
    status, answer = await _post(gw, "old", _call(2, "echo_headers", {}), headers)
    assert (status, answer["error"]["code"]) == (400, -32022)
    assert V not in answer["error"]["data"]["supported"]


async def test_client_disconnect_cancels_upstream_request(modern_env: tuple[Gateway, int]) -> None:
    gw, port = modern_env
    headers = _headers(gw, **{"Mcp-Name": "slow"})
    async with aiohttp.ClientSession() as http:
        resp = await http.post(gw.url("modern"), json=_call(9, "slow", {}), headers=headers)
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async with asyncio.timeout(10):
            first = await resp.content.readuntil(b"\n\n")
        assert b"notifications/progress" in first
        closed_at = time.time()
        resp.connection.transport.abort()  # type: ignore[union-attr]  # the client goes away mid-stream
        resp.close()
        events: list[dict[str, Any]] = []
        for _ in range(100):
            async with http.get(f"http://127.0.0.1:{port}/events") as r:
                events = await r.json()
            if any(e["event"] == "cancelled" for e in events):
                break
            await asyncio.sleep(0.05)
    cancelled = [e for e in events if e["event"] == "cancelled"]
    assert cancelled, f"upstream never saw the cancellation: {events}"
    assert cancelled[-1]["t"] - closed_at < 1.0
