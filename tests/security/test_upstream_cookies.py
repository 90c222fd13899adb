"""An upstream's cookies stay between it and nobody: whichever forward client is configured (`upstream.client`),
a `Set-Cookie` one answer carries is never stored and sent on a later request, another caller's included (a shared
cookie store would hand one caller's upstream session to every other caller)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client

from tests.harness import default_policies, running, start_gateway
from tests.security.support import start_recording_upstream

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
async def test_upstream_cookies_are_never_replayed(tmp_path: Path, client: str) -> None:
    up = start_recording_upstream(tmp_path, set_cookie=True)
    scopes = ["read", "write"]
    keys = {"alice": {"tenant": "acme", "scopes": scopes}, "bob": {"tenant": "acme", "scopes": scopes}}
    # by name: aiohttp's cookie store ignores cookies of IP-address hosts, so an IP would hide a shared store
    url = up.url.replace("127.0.0.1", "localhost")
    gw = start_gateway(tmp_path / "gw", default_policies(url), keys=keys, config={"upstream": {"client": client}})
    with running(gw, up.proc):
        for caller in ("alice", "bob", "alice"):
            async with (
                httpx.AsyncClient(headers=gw.auth(caller), timeout=30) as http,
                streamable_http_client(gw.url(), http_client=http) as (read, write, _),
                ClientSession(read, write) as s,
            ):
                await s.initialize()
                res = await s.call_tool("echo", {"text": caller})
                block = res.content[0]
                assert isinstance(block, types.TextContent) and block.text == caller
    requests = up.requests_since(0)
    assert len(requests) >= 9  # initialize, initialized, tools/call (and GET, DELETE) per caller
    assert [r for r in requests if "cookie" in r["headers"]] == []
