"""A session's place under the caps is reserved before the upstream is asked to create it, and given back when no
session comes of it: also when the client leaves while the upstream is still answering (its handler is cancelled;
the place used to stay held for the reservation's 120 s, so a key at its cap could not open a session again)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.harness import default_policies, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "r", "version": "1"}},
}


async def test_a_client_that_leaves_during_initialize_gives_its_place_back(tmp_path: Path) -> None:
    up = start_upstream(tmp_path, module="tests.upstreams.faulty")
    config = {"http": {"max_sessions_per_key": 1}}
    gw = start_gateway(tmp_path / "gw", default_policies(up.url), keys={"k": {"tenant": "acme"}}, config=config)
    headers = {**ACCEPT, **gw.auth("k")}
    with running(gw, up):
        async with httpx.AsyncClient(timeout=30) as control:
            await control.post(f"http://127.0.0.1:{up.port}/control", params={"mode": "slow", "delay": "3"})
            async with httpx.AsyncClient(timeout=0.5) as impatient:
                with pytest.raises(httpx.TimeoutException):
                    await impatient.post(gw.url(), json=INIT, headers=headers)  # leaves while the upstream thinks
            await control.post(f"http://127.0.0.1:{up.port}/control", params={"mode": "ok"})
            await asyncio.sleep(0.5)
            r = await control.post(gw.url(), json=INIT, headers=headers)
            assert r.status_code == 200, r.text  # not 429 session_limit: the place came back
