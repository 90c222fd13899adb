"""A stdio server outrunning a client that does not read (docs/security.md "stdio upstreams").

Through a real gateway process: a stdio server (tests/upstreams/stdio_server.py `flood`) writes 1 MiB progress
messages as fast as it can to a POST whose client never reads its answer. The gateway holds at most the route's
`stdio.max_queued_bytes` for that client, then cuts it off: its memory stays bounded while the server writes many
times that, the request is cancelled at the process, the audit record says why, a metric counts it, and the same
session goes on working. Before the byte bound, only the message count was bounded and the red team saw 385 MB held
for one such client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import (
    MCP_POST_HEADERS,
    PYTHON,
    ROOT,
    Gateway,
    initialize_request,
    metric_sample,
    running,
    start_gateway,
    stdio_policies,
)
from tests.security.support import audit_records, gateway_rss

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
QUEUE_LIMIT = 8 * MIB
MESSAGES, MESSAGE_SIZE = 256, MIB  # 256 MiB written in all: 32 times the bound
# the bound, the socket buffers of both directions and the allocator's slack: far below what the server writes
GROWTH_BOUND = 96 * MIB
ACCEPT = MCP_POST_HEADERS
INIT = initialize_request()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("stdio-slow")
    stdio = {
        "env": {"STDIO_EVENTS": str(tmp / "events.log")},
        "command": PYTHON,
        "args": ["-m", "tests.upstreams.stdio_server", "--name", "flood"],
        "cwd": str(ROOT),
        "max_message_bytes": 2 * MIB,
        "max_queued_bytes": QUEUE_LIMIT,
    }
    gw = start_gateway(
        tmp / "gw", stdio_policies("flood", stdio), keys={"k": {"tenant": "acme", "scopes": ["read", "write"]}}
    )
    with running(gw):
        yield gw


def _events(gw: Gateway) -> str:
    path = gw.workdir.parent / "events.log"
    return path.read_text() if path.exists() else ""


async def _session(http: httpx.AsyncClient, gw: Gateway) -> dict[str, str]:
    r = await http.post(gw.url("flood"), json=INIT)
    assert r.status_code == 200, r.text
    hdrs = {"Mcp-Session-Id": r.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-06-18"}
    r = await http.post(gw.url("flood"), json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=hdrs)
    assert r.status_code == 202
    return hdrs


async def _post_and_never_read(gw: Gateway, hdrs: dict[str, str]) -> socket.socket:
    call = {
        "jsonrpc": "2.0",
        "id": "flood-1",
        "method": "tools/call",
        "params": {"name": "flood", "arguments": {"n": MESSAGES, "size": MESSAGE_SIZE}, "_meta": {"progressToken": 7}},
    }
    body = json.dumps(call).encode()
    head = [
        "POST /mcp/flood HTTP/1.1",
        f"Host: 127.0.0.1:{gw.port}",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in {**ACCEPT, **gw.auth("k"), **hdrs}.items()),
    ]
    sock = socket.socket()
    # a small receive window: the gateway's writes stall after a few hundred KiB, as with a client that stopped
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect(("127.0.0.1", gw.port))
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return sock


async def test_a_client_that_does_not_read_is_cut_off_and_memory_stays_bounded(gateway: Gateway) -> None:
    gw = gateway
    async with httpx.AsyncClient(headers={**gw.auth("k"), **ACCEPT}, timeout=60) as http:
        hdrs = await _session(http, gw)
        await asyncio.sleep(1.0)
        warm = gateway_rss(gw)
        sock = await _post_and_never_read(gw, hdrs)
        try:
            peak = warm
            async with asyncio.timeout(120):
                while True:
                    peak = max(peak, gateway_rss(gw))
                    assert peak - warm < GROWTH_BOUND, f"gateway RSS grew {(peak - warm) / MIB:.0f} MiB"
                    text = (await http.get(f"{gw.base}/metrics")).text
                    if metric_sample(text, "mcp_gateway_stdio_slow_clients_total", server="flood") >= 1:
                        break
                    await asyncio.sleep(0.2)
            # the request was cancelled at the process: the server stops writing long before its 256 messages
            async with asyncio.timeout(60):
                while "cancelled flood" not in _events(gw):
                    peak = max(peak, gateway_rss(gw))
                    await asyncio.sleep(0.2)
            for _ in range(5):
                peak = max(peak, gateway_rss(gw))
                await asyncio.sleep(0.2)
            assert "flooded" not in _events(gw)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
        assert peak - warm < GROWTH_BOUND, f"gateway RSS grew {(peak - warm) / MIB:.0f} MiB"

        # the session goes on: the next call is answered
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "add", "arguments": {"a": 1, "b": 2}},
        }
        r = await http.post(gw.url("flood"), json=call, headers=hdrs)
        assert r.status_code == 200 and '"3"' in r.text, r.text

    # audited, and not blamed on the server
    async with asyncio.timeout(30):
        while not [r for r in audit_records(gw) if r.get("rpc_id") == "flood-1"]:
            await asyncio.sleep(0.2)
    (record,) = [r for r in audit_records(gw) if r.get("rpc_id") == "flood-1"]
    assert record["notes"]["stream_error"] == "client_too_slow", record
