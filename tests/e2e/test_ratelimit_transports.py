"""The over-limit contract inside legacy HTTP+SSE and WebSocket sessions: the refused call gets the JSON-RPC
error (-31029, data.limit, data.retryAfterSeconds) as a message for its id, and the session goes on."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, McpError
from mcp.client.sse import sse_client
from websockets.asyncio.client import connect as ws_connect

from tests.harness import PYTHON, Gateway, Proc, free_port, running, start_gateway, start_upstream, wait_port

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mcp.client.websocket as sdk_ws

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


async def _until_refused(s: ClientSession) -> McpError:
    await s.initialize()  # costs 1 of the 3 (limits.costs.initialize)
    for _ in range(6):
        try:
            await s.call_tool("add", {"a": 1, "b": 2})
        except McpError as exc:
            return exc
    raise AssertionError("never refused")


def _check(err: McpError) -> None:
    assert err.error.code == -31029
    data: Any = err.error.data
    assert data["limit"] == "key" and data["reason"] == "rate_limited"
    assert data["retryAfterSeconds"] >= 1


async def test_refusal_inside_sse_and_websocket_sessions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sse_up = start_upstream(tmp_path, transport="sse")
    ws_port = free_port()
    ws_up = Proc([PYTHON, "-m", "tests.upstreams.ws_server", "--port", str(ws_port)], tmp_path / "ws.log").start()
    wait_port(ws_port, proc=ws_up.popen, log=ws_up.log)
    servers = {
        # compat_status_200: the v1 SDK keeps its SSE POST writer alive only on 2xx
        "legacy": {"upstreams": [{"url": sse_up.url}], "owner": "acme", "transport": "sse", "compat_status_200": True},
        "ws": {"upstreams": [{"url": f"ws://127.0.0.1:{ws_port}/ws"}], "owner": "acme", "transport": "websocket"},
    }
    limited = {"tenant": "acme", "scopes": ["read", "write"], "rate_limit": {"rate": 3, "per": "minute"}}
    gw: Gateway = start_gateway(
        tmp_path / "gw",
        {
            "servers.yaml": {"servers": servers},
            "tenants.yaml": {"tenants": {"acme": {"servers": ["legacy", "ws"]}}},
            "limits.yaml": {"tiers": {}},
        },
        keys={"sse": limited, "ws": limited},
    )
    with running(gw, sse_up, ws_up):
        async with sse_client(gw.url("legacy"), headers=gw.auth("sse")) as (r, w), ClientSession(r, w) as s:
            _check(await _until_refused(s))
            await s.send_ping()  # the session survived the refusal (ping costs nothing)

        monkeypatch.setattr(sdk_ws, "ws_connect", functools.partial(ws_connect, additional_headers=gw.auth("ws")))
        async with (
            sdk_ws.websocket_client(gw.url("ws").replace("http://", "ws://")) as (r, w),
            ClientSession(r, w) as s,
        ):
            _check(await _until_refused(s))
            await s.send_ping()
