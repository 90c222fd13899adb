"""The legacy relay parses the upstream stream (to rewrite `endpoint`): CR, LF and CRLF line ends, and a CRLF split
across two writes, must all come through, the events after `endpoint` byte for byte."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.harness import free_port, running, start_gateway
from tests.upstreams.sse_read import EventReader

pytestmark = pytest.mark.integration

ENDPOINT = b"event: endpoint\rdata: /messages/?session_id=abc\r\r"


class RawLegacyUpstream:
    """A bare HTTP+SSE server whose line ends change from event to event."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent = bytearray()  # everything written after the endpoint event

    async def sse(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(ENDPOINT)
        n = 0
        while True:
            msg = await self.queue.get()
            data = json.dumps(msg).encode()
            n += 1
            if n == 1:
                parts = [b"event: message\ndata: " + data + b"\n\n"]
            elif n == 2:
                parts = [b"event: message\r\ndata: " + data + b"\r", b"\n\r\n"]  # CRLF split across writes
            else:
                parts = [b"data: " + data + b"\r\r"]
            for part in parts:
                self.sent += part
                await resp.write(part)
                await asyncio.sleep(0.05)

    async def messages(self, request: web.Request) -> web.Response:
        if request.query.get("session_id") != "abc":
            return web.Response(status=404)
        msg = await request.json()
        await self.queue.put({"jsonrpc": "2.0", "id": msg["id"], "result": {"echo": msg["method"]}})
        return web.Response(status=202)


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[RawLegacyUpstream, int]]:
    up = RawLegacyUpstream()
    app = web.Application()
    app.router.add_get("/sse", up.sse)
    app.router.add_post("/messages/", up.messages)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield up, port
    finally:
        await runner.cleanup()


async def test_cr_lf_crlf_through_legacy_relay(upstream: tuple[RawLegacyUpstream, int], tmp_path: Path) -> None:
    up, port = upstream
    policies = {
        "servers.yaml": {
            "servers": {
                "cr": {
                    "upstreams": [{"url": f"http://127.0.0.1:{port}/sse"}],
                    "owner": "acme",
                    "transport": "sse",
                    "health": {"enabled": False},
                }
            }
        },
        "tenants.yaml": {"tenants": {"acme": {"servers": ["cr"]}}},
        "keys.yaml": {"keys": []},
        "limits.yaml": {},
        "access.yaml": {"rules": []},
    }
    gw = await asyncio.to_thread(
        start_gateway, tmp_path / "gw", policies, keys={"k": {"tenant": "acme", "scopes": ["read"]}}
    )
    with running(gw):
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.get(gw.url("cr"), headers={**gw.auth("k"), "Accept": "text/event-stream"}) as stream,
        ):
            events = EventReader(stream)
            endpoint = await events.next()
            assert (endpoint.event, endpoint.data) == ("endpoint", "/mcp/cr/messages/?session_id=abc")
            after_endpoint = len(events.raw)
            got: list[dict[str, Any]] = []
            for i, method in enumerate(["initialize", "ping", "tools/list"], start=1):
                r = await http.post(
                    gw.base + endpoint.data,
                    json={"jsonrpc": "2.0", "id": i, "method": method, "params": {}},
                    headers=gw.auth("k"),
                )
                assert r.status == 202
                got.append(json.loads((await events.next_message()).data or ""))
            assert [m["result"]["echo"] for m in got] == ["initialize", "ping", "tools/list"]
            # the LF that completes the last CRLF may still be on its way
            async with asyncio.timeout(5):
                while len(events.raw) - after_endpoint < len(up.sent):
                    chunk = await stream.content.readany()
                    events.raw += chunk
            assert bytes(events.raw[after_endpoint:]) == bytes(up.sent)
