"""`@modelcontextprotocol/server-everything` in stdio mode (installed from npm by `make stdio-servers`, run with the
Node.js of `make conformance`) behind a `transport: stdio` route, driven by the official MCP Python SDK client:
initialize, tools/list, tools/call, a call with progress, a refusal, resources and prompts, session end (the
process goes)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psutil
import pytest
from mcp import ClientSession, McpError
from mcp.client.streamable_http import streamable_http_client

from tests.e2e.test_stdio import eventually, text_of
from tests.harness import ROOT, Gateway, running, start_gateway

pytestmark = pytest.mark.e2e

NODE = ROOT / "tests" / "conformance" / "node_modules" / ".bin" / "node"
EVERYTHING = ROOT / "tests" / "stdio" / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist"


def install() -> None:
    """`make stdio-servers`, once at a time across xdist workers (a no-op when its stamps are current)."""
    lock = ROOT / ".venv" / ".stdio-servers.lock"
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        done = subprocess.run(
            ["make", "-s", "stdio-servers"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
        )
    assert done.returncode == 0, f"make stdio-servers failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    install()
    work = tmp_path_factory.mktemp("everything")
    stdio = {"command": str(NODE), "args": [str(EVERYTHING / "index.js"), "stdio"], "cwd": str(work)}
    policies = {
        "servers.yaml": {"servers": {"everything": {"transport": "stdio", "owner": "acme", "stdio": stdio}}},
        "tenants.yaml": {"tenants": {"acme": {"servers": ["everything"]}}},
        "limits.yaml": {},
        "access.yaml": {"rules": []},
    }
    keys = {"k": {"tenant": "acme", "scopes": ["read", "write"]}, "reader": {"tenant": "acme", "scopes": ["read"]}}
    gateway = start_gateway(work / "gw", policies, keys=keys)
    with running(gateway):
        yield gateway


@contextlib.asynccontextmanager
async def session(gw: Gateway, key: str) -> AsyncIterator[ClientSession]:
    async with (
        httpx.AsyncClient(headers=gw.auth(key), timeout=60) as http,
        streamable_http_client(gw.url("everything"), http_client=http) as (read, write, _),
        ClientSession(read, write) as s,
    ):
        await asyncio.wait_for(s.initialize(), 60)
        yield s


def _pick(names: set[str], *choices: str) -> str:
    for name in choices:
        if name in names:
            return name
    raise AssertionError(f"none of {choices} in {sorted(names)}")


async def test_server_everything_through_the_gateway(gw: Gateway) -> None:
    progress: list[float] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)

    async with session(gw, "k") as s:
        tools = {t.name for t in (await s.list_tools()).tools}
        echo = _pick(tools, "echo")
        assert "hello" in text_of(await s.call_tool(echo, {"message": "hello"}))
        long_running = _pick(tools, "trigger-long-running-operation", "longRunningOperation")
        args: dict[str, Any] = {"duration": 1, "steps": 3}
        result = await asyncio.wait_for(s.call_tool(long_running, args, progress_callback=on_progress), 60)
        assert not result.isError
        assert progress == [1, 2, 3]
        resources = await s.list_resources()
        assert resources.resources
        first = await s.read_resource(resources.resources[0].uri)
        assert first.contents
        prompts = await s.list_prompts()
        assert prompts.prompts
        # the session's node process, a child of the gateway while the session lives
        children = [
            c for c in psutil.Process(gw.proc.pid).children(recursive=True) if "index.js" in " ".join(c.cmdline())
        ]
        assert children
    await eventually(
        lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children),
        "the session's node process ended",
    )


async def test_refusal_keeps_the_session(gw: Gateway) -> None:
    async with session(gw, "reader") as s:
        with pytest.raises(McpError) as err:
            await s.call_tool("echo", {"message": "no"})
        assert err.value.error.code == -31403
        # the session goes on (its list holds only what a read-only key may call: none of these tools)
        assert not (await s.list_tools()).tools
        assert (await s.list_prompts()).prompts
