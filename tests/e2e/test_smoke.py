"""Smoke: the official SDK client initializes and calls a tool through a real gateway process."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

from tests.harness import default_policies, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e


async def test_sdk_client_calls_tool_through_gateway(tmp_path: Path) -> None:
    up = start_upstream(tmp_path)
    gw = start_gateway(
        tmp_path / "gw", default_policies(up.url), keys={"k1": {"tenant": "acme", "scopes": ["read", "write"]}}
    )
    with running(gw, up):
        async with streamablehttp_client(gw.url(), headers=gw.auth("k1")) as (r, w, _), ClientSession(r, w) as s:
            init = await s.initialize()
            assert init.serverInfo.name == "example"
            res = await s.call_tool("add", {"a": 2, "b": 40})
            assert res.content[0].text == "42"  # type: ignore[union-attr]
