"""WebSocket sockets count as streams: one key's idle sockets cannot take every upstream connection of a route.

A socket holds an upstream connection for as long as it is open, like a GET event stream, so its upgrade runs the
rate-limit stage: it is charged and takes a place under the key's and tenant's stream caps (limits.streams), kept
until the socket closes. Beyond the cap the upgrade is refused with 429 `key_streams` before any upstream socket is
opened."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.harness import Gateway, Upstream, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e

CAP = 4


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Gateway, Upstream]]:
    up = start_upstream(tmp_path, module="tests.upstreams.ws_server")
    policies = {
        "servers.yaml": {
            "servers": {"ws": {"upstreams": [{"url": f"ws://127.0.0.1:{up.port}/ws"}], "transport": "websocket"}}
        },
        "tenants.yaml": {"tenants": {"acme": {"servers": ["ws"]}}},
        "limits.yaml": {"streams": {"per_key": CAP, "per_tenant": 100}},
        "access.yaml": {"rules": []},
    }
    keys = {"hog": {"tenant": "acme", "scopes": ["read", "write"]}, "other": {"tenant": "acme", "scopes": ["read"]}}
    gw = start_gateway(tmp_path / "gw", policies, keys=keys)
    with running(gw, up):
        yield gw, up


async def _upstream_sockets(up: Upstream) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{up.port}/stats") as r:
        return int((await r.json())["connections"])


async def test_one_keys_sockets_are_capped_and_give_their_place_back(env: tuple[Gateway, Upstream]) -> None:
    gw, up = env
    url = gw.url("ws").replace("http://", "ws://")
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())
        sockets = [
            await stack.enter_async_context(http.ws_connect(url, protocols=("mcp",), headers=gw.auth("hog")))
            for _ in range(CAP)
        ]
        before = await _upstream_sockets(up)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, protocols=("mcp",), headers=gw.auth("hog"))
        assert refused.value.status == 429
        assert await _upstream_sockets(up) == before  # refused before the upstream socket was opened
        # the same upgrade as plain HTTP: a well-formed refusal naming the cap
        upgrade = {
            **gw.auth("hog"),
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Protocol": "mcp",
        }
        async with http.get(gw.url("ws"), headers=upgrade) as r:
            assert r.status == 429 and "Retry-After" in r.headers
            err = (await r.json())["error"]
        assert (err["code"], err["data"]["limit"]) == (-31031, "key_streams"), err
        # another key of the tenant is not affected
        other = await stack.enter_async_context(http.ws_connect(url, protocols=("mcp",), headers=gw.auth("other")))
        assert not other.closed
        # a closed socket gives its place back
        await sockets.pop().close()
        again = None
        for _ in range(50):
            try:
                again = await http.ws_connect(url, protocols=("mcp",), headers=gw.auth("hog"))
                break
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 429
                await asyncio.sleep(0.1)
        assert again is not None, "the closed socket's place never came back"
        await again.close()
