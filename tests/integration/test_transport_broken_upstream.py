"""An upstream that dies in the middle of its answer: the client's connection is cut at once, never left hanging.

The upstream here is a raw socket server on purpose: it must send a partial HTTP answer (a declared Content-Length,
or a chunked SSE stream, then a reset), which no MCP SDK server does on request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.harness import Gateway, default_policies, free_port, running, start_gateway

pytestmark = pytest.mark.integration

PARTIAL_JSON = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    b'{"jsonrpc":"2.0","id":1,"result":{'
)
HEADERS_ONLY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
PARTIAL_SSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nf\r\nevent: message\n\r\n"
)


async def _serve(port: int, answer: bytes) -> AsyncIterator[None]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()  # dies mid-answer

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        yield


async def _gateway(tmp_path: Path, answer: bytes, compat: bool | str = "auto") -> tuple[Gateway, AsyncIterator[None]]:
    port = free_port()
    gen = _serve(port, answer)
    await gen.__anext__()
    gw = start_gateway(
        tmp_path / "gw",
        default_policies(
            f"http://127.0.0.1:{port}/mcp",
            health={"enabled": False},
            breaker={"enabled": False},
            compat_status_200=compat,
        ),
        keys={"k": {"tenant": "acme", "scopes": ["read", "write"]}},
    )
    return gw, gen


BODY = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x", "arguments": {}}}


@pytest.mark.parametrize("answer", [PARTIAL_JSON, PARTIAL_SSE], ids=["content-length", "sse"])
async def test_upstream_dying_mid_answer_cuts_the_client_instead_of_hanging(tmp_path: Path, answer: bytes) -> None:
    gw, gen = await _gateway(tmp_path, answer)
    with running(gw):
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x", "arguments": {}}}
        headers = {**gw.auth("k"), "Accept": "application/json, text/event-stream"}
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=30) as c:
            with pytest.raises(httpx.HTTPError):  # RemoteProtocolError / ReadError: the answer is visibly broken
                r = await c.post(gw.url(), headers=headers, content=json.dumps(body))
                await r.aread()
        # the client learns at once, not after its own 30 s timeout (a bound on a hang, not a speed assertion)
        assert time.monotonic() - started < 15
        deadline = time.monotonic() + 10
        records: list[dict[str, object]] = []
        while time.monotonic() < deadline and not records:
            audit = gw.workdir / "audit.jsonl"
            if audit.exists():
                records = [
                    r for r in map(json.loads, audit.read_text().splitlines()) if r["rpc_method"] == "tools/call"
                ]
            await asyncio.sleep(0.1)
        assert records and records[0]["http_status"] == 502
        assert records[0]["notes"]["stream_error"] == "H1BodyError"
    await gen.aclose()


@pytest.mark.parametrize(("compat", "status"), [(False, 502), ("auto", 200)])
async def test_upstream_dying_before_its_body_gets_a_well_formed_error(
    tmp_path: Path, compat: bool | str, status: int
) -> None:
    """Headers, then nothing: the gateway has sent nothing yet, so the client gets a proper JSON-RPC error. Under
    `compat_status_200: auto` a `tools/call` the upstream failed is answered 200 with that error, so the official
    Python SDK 1.x client's session survives it (gateway/transports/refusal_status.py): the forwarder's errors
    name their stage."""
    gw, gen = await _gateway(tmp_path, HEADERS_ONLY, compat)
    with running(gw):
        headers = {**gw.auth("k"), "Accept": "application/json, text/event-stream"}
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.post(gw.url(), headers=headers, content=json.dumps(BODY))
        assert r.status_code == status
        assert r.headers["Content-Type"].startswith("application/json")
        err = r.json()
        assert err["id"] == 1 and err["error"]["data"]["reason"] == "upstream_stream_broken"
        assert err["error"]["data"]["stage"] == "forward" and err["error"]["code"] == -31006
    await gen.aclose()
