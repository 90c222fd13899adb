"""Smoke: the official SDK client initializes and calls a tool through a real gateway process."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client

from tests.harness import default_policies, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e


async def test_sdk_client_calls_tool_through_gateway(tmp_path: Path) -> None:
    up = start_upstream(tmp_path)
    gw = start_gateway(
        tmp_path / "gw", default_policies(up.url), keys={"k1": {"tenant": "acme", "scopes": ["read", "write"]}}
    )
    with running(gw, up):
        async with (
            httpx.AsyncClient(headers=gw.auth("k1"), timeout=30) as http,
            streamable_http_client(gw.url(), http_client=http) as (read, write, _),
            ClientSession(read, write) as s,
        ):
            init = await s.initialize()
            assert init.serverInfo.name == "example"
            res = await s.call_tool("add", {"a": 2, "b": 40})
            block = res.content[0]
            assert isinstance(block, types.TextContent) and block.text == "42"
