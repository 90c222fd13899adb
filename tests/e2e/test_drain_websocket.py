"""Drain with an open WebSocket: SIGTERM sends the client a close frame with 1001 (going away), the upstream socket
is closed too, and the gateway exits 0 without waiting out the grace period for the socket."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness import PYTHON, Proc, free_port, running, start_gateway, wait_port

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def policies(port: int) -> dict[str, Any]:
    return {
        "servers.yaml": {
            "servers": {
                "raw": {"owner": "acme", "transport": "websocket", "upstreams": [{"url": f"ws://127.0.0.1:{port}/raw"}]}
            }
        },
        "tenants.yaml": {"tenants": {"acme": {"servers": ["raw"]}}},
        "keys.yaml": {"keys": []},
        "limits.yaml": {},
        "access.yaml": {"rules": []},
    }


async def test_sigterm_closes_websockets_with_going_away(tmp_path: Path) -> None:
    port = free_port()
    up = Proc([PYTHON, "-m", "tests.upstreams.ws_server", "--port", str(port)], tmp_path / "ws-upstream.log").start()
    wait_port(port, proc=up.popen, log=up.log)
    # a grace period far longer than the test's own deadlines: an open socket must not hold the drain up
    gw = start_gateway(
        tmp_path / "gw",
        policies(port),
        keys={"rw": {"tenant": "acme", "scopes": ["read", "write"]}},
        config={"http": {"shutdown_grace_seconds": 120}},
    )
    with running(gw, up):
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(
                gw.url("raw").replace("http://", "ws://"), protocols=("mcp",), headers=gw.auth("rw")
            )
            await ws.send_str(json.dumps({"jsonrpc": "2.0", "method": "notifications/x", "params": {"v": 1}}))
            echoed = await ws.receive(timeout=10)
            assert json.loads(echoed.data)["params"] == {"v": 1}

            # the open socket shows in the stream gauge (sampled at scrape time)
            async with http.get(f"{gw.base}/metrics") as r:
                metrics = await r.text()
            assert 'mcp_gateway_streams_open{kind="websocket"} 1.0' in metrics.splitlines()

            gw.proc.signal(signal.SIGTERM)
            msg = await ws.receive(timeout=20)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 1001
            await ws.close()

            assert gw.proc.popen is not None
            assert await asyncio.to_thread(gw.proc.popen.wait, 30) == 0

            closes: list[dict[str, Any]] = []
            for _ in range(100):
                async with http.get(f"http://127.0.0.1:{port}/closes") as r:
                    closes = [e for e in await r.json() if e["event"] == "close"]
                if closes:
                    break
                await asyncio.sleep(0.05)
            assert len(closes) == 1  # the gateway closed its upstream socket as well
