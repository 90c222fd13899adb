"""Legacy HTTP+SSE (2024-11-05) through the gateway: the SDK's `sse_client` against the SDK's SSE server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from mcp import ClientSession, McpError
from mcp.client.sse import sse_client

from tests.harness import Gateway, Upstream, running, start_gateway, start_upstream
from tests.upstreams.sse_read import EventReader

pytestmark = pytest.mark.e2e

KEYS = {
    "rw": {"tenant": "acme", "scopes": ["read", "write"]},
    "ro": {"tenant": "acme", "scopes": ["read"]},
    "other": {"tenant": "acme", "scopes": ["read", "write"]},
}


def _policies(up: Upstream) -> dict[str, Any]:
    legacy = {"upstreams": [{"url": up.url}], "owner": "acme", "transport": "sse"}
    return {
        "servers.yaml": {"servers": {"legacy": legacy, "legacy200": {**legacy, "compat_status_200": True}}},
        "tenants.yaml": {
            "tenants": {"acme": {"servers": ["legacy", "legacy200"], "tools": {"deny": ["secret_admin_tool"]}}}
        },
        "keys.yaml": {"keys": []},
        "limits.yaml": {},
        "access.yaml": {"rules": []},
    }


@pytest.fixture(scope="module")
def legacy_env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp_path = tmp_path_factory.mktemp("legacy")
    up = start_upstream(tmp_path, transport="sse")
    gw = start_gateway(tmp_path / "gw", _policies(up), keys=KEYS)
    with running(gw, up):
        yield gw, up


async def test_sdk_sse_client_end_to_end(legacy_env: tuple[Gateway, Upstream]) -> None:
    gw, _ = legacy_env
    progress: list[float] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)

    async with sse_client(gw.url("legacy"), headers=gw.auth("rw")) as (r, w), ClientSession(r, w) as s:
        init = await s.initialize()
        assert init.serverInfo.name == "example"
        tools = {t.name for t in (await s.list_tools()).tools}
        assert {"add", "echo", "count"} <= tools
        assert "secret_admin_tool" not in tools  # the answer came on the stream, filtered like any tools/list
        res = await s.call_tool("add", {"a": 2, "b": 40})
        assert res.content[0].text == "42"  # type: ignore[union-attr]
        res = await s.call_tool("count", {"n": 3, "delay": 0.05}, progress_callback=on_progress)
        assert res.content[0].text == "counted to 3"  # type: ignore[union-attr]
        assert progress == [1, 2, 3]
        text = (await s.read_resource("example://greeting")).contents[0]
        assert text.text == "hello from the example server"  # type: ignore[union-attr]


async def test_sdk_client_refused_call_arrives_on_stream_and_session_continues(
    legacy_env: tuple[Gateway, Upstream],
) -> None:
    """On a compat (HTTP 200) route the v1 SDK keeps its POST writer alive; the refusal reaches the waiting call
    through the stream, and the session goes on."""
    gw, _ = legacy_env
    async with sse_client(gw.url("legacy200"), headers=gw.auth("ro")) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        with pytest.raises(McpError) as info:
            await asyncio.wait_for(s.call_tool("add", {"a": 1, "b": 1}), 10)
        assert info.value.error.code == -31403
        assert info.value.error.data["reason"] == "scope_denied"  # type: ignore[index]
        # the session goes on: its list holds the tools a read-only key may call, none here (issue 16)
        tools = await asyncio.wait_for(s.list_tools(), 10)
        assert tools.tools == []
        # and the upstream still answers in it: an empty list is also what a broken filter would show
        assert (await asyncio.wait_for(s.list_prompts(), 10)).prompts


async def _open_stream(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[Any, EventReader]:
    resp = await http.get(url, headers={**headers, "Accept": "text/event-stream"})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return resp, EventReader(resp)


def _init(rpc_id: int) -> bytes:
    params = {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
    return json.dumps({"jsonrpc": "2.0", "id": rpc_id, "method": "initialize", "params": params}).encode()


async def test_endpoint_rewrite_bound_posts_and_refusal_event(legacy_env: tuple[Gateway, Upstream]) -> None:
    gw, _ = legacy_env
    ctype = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        resp, events = await _open_stream(http, gw.url("legacy"), gw.auth("ro"))
        endpoint = await events.next()
        assert endpoint.event == "endpoint"
        assert endpoint.data is not None and endpoint.data.startswith("/mcp/legacy/messages/?session_id=")
        post_url = gw.base + endpoint.data

        r = await http.post(post_url, data=_init(1), headers={**gw.auth("ro"), **ctype})
        assert r.status == 202
        answer = json.loads((await events.next_message()).data or "")
        assert answer["id"] == 1 and answer["result"]["serverInfo"]["name"] == "example"

        # a refused request: the JSON-RPC error on the POST (200: the SDKs' SSE writers stop on non-2xx, see
        # docs/transports.md "Refusal status") and the same error on the stream
        call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "add", "arguments": {}}}
        r = await http.post(post_url, json=call, headers=gw.auth("ro"))
        assert r.status == 200
        body = await r.json()
        assert body["id"] == 7 and body["error"]["code"] == -31403
        ev = await events.next_message()
        assert ev.event == "message"
        assert json.loads(ev.data or "") == body

        # another principal presenting the session gets 404, and nothing is written on the owner's stream
        r = await http.post(post_url, json=call, headers=gw.auth("other"))
        assert r.status == 404
        ping = {"jsonrpc": "2.0", "id": 8, "method": "ping"}
        r = await http.post(post_url, json=ping, headers=gw.auth("ro"))
        assert r.status == 202
        assert json.loads((await events.next_message()).data or "")["id"] == 8

        # the stream's end ends the binding
        resp.close()
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            r = await http.post(post_url, json=ping, headers=gw.auth("ro"))
            if r.status == 404 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
        assert r.status == 404
        assert (await r.json())["error"]["data"]["reason"] == "session_not_found"


async def test_sse_path_alias_and_post_without_session(legacy_env: tuple[Gateway, Upstream]) -> None:
    gw, _ = legacy_env
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        resp, events = await _open_stream(http, gw.url("legacy") + "/sse", gw.auth("rw"))
        endpoint = await events.next()
        assert endpoint.event == "endpoint" and (endpoint.data or "").startswith("/mcp/legacy/messages/")
        resp.close()
        r = await http.post(gw.url("legacy") + "/messages/", data=_init(1), headers=gw.auth("rw"))
        assert r.status == 400
        assert (await r.json())["error"]["data"]["reason"] == "missing_session"
        # a Streamable-HTTP style POST to the route: 405 makes dual-transport clients fall back to GET
        r = await http.post(gw.url("legacy"), data=_init(1), headers=gw.auth("rw"))
        assert r.status == 405
        r = await http.get(gw.url("legacy"), headers={"Accept": "text/event-stream"})
        assert r.status == 401
