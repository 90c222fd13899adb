"""`transport: stdio` routes through a real gateway process, driven by the official MCP Python SDK client, against a
stdio server built with the same SDK (tests/upstreams/stdio_server.py).

Covers: initialize, tools/list, tools/call with progress, elicitation (a server-to-client request on the POST's
stream), a refusal, session end (the process goes); a crash mid-call (clear JSON-RPC error, then a new session
works); a client gone mid-stream (the process is told to cancel); 24 sessions (200 with STDIO_CHURN_SESSIONS=200)
opened and closed with no process left; the process caps (429, audited); the idle timeout; a shared process (one
pid, ids remapped); 2026-07-28 requests; stderr lines in the gateway log; metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
import pytest
from mcp import ClientSession, McpError, types
from mcp.client.streamable_http import streamable_http_client

from tests.harness import (
    MCP_POST_HEADERS,
    PYTHON,
    ROOT,
    Gateway,
    initialize_request,
    metric_sample,
    running,
    start_gateway,
)

pytestmark = pytest.mark.e2e

DEADLINE = 30.0
ACCEPT = MCP_POST_HEADERS
INIT = initialize_request()


def stdio_server(name: str, **stdio: Any) -> dict[str, Any]:
    block = {"command": PYTHON, "args": ["-m", "tests.upstreams.stdio_server", "--name", name], "cwd": str(ROOT)}
    block.update(stdio)
    return {"transport": "stdio", "owner": "acme", "stdio": block}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("stdio")
    events = tmp / "events.log"
    servers = {
        "tools": stdio_server("tools", env={"STDIO_EVENTS": str(events)}),
        "capped": stdio_server("capped", max_processes=4, max_processes_per_tenant=3, max_processes_per_key=2),
        "churn": stdio_server("churn", max_processes=16, max_processes_per_tenant=16, max_processes_per_key=16),
        "idle": stdio_server("idle", idle_timeout_seconds=1),
        "shared": {**stdio_server("shared", process="shared"), "health": {"interval": 0.5, "timeout": 10}},
        "stubborn": stdio_server("stubborn", stop_grace_seconds=0.5, max_log_line=100, log_lines_per_second=5),
        "fragile": {
            **stdio_server("fragile", restart_backoff_seconds=0.1, max_restart_backoff_seconds=0.2),
            # initialize, crash, initialize, crash: half of the last four calls failed
            "breaker": {"window": 4, "min_calls": 4, "failure_rate": 0.5, "open_seconds": 60},
        },
    }
    policies = {
        "servers.yaml": {"servers": servers},
        "tenants.yaml": {"tenants": {"acme": {"servers": list(servers)}}},
        "keys.yaml": {"keys": []},
        # 200 sessions of four requests each from one key: above the default user tier
        "limits.yaml": {"tiers": {t: {"rate": 100000, "per": "minute"} for t in ("admin", "user", "anonymous")}},
        "access.yaml": {"rules": []},
    }
    gw = start_gateway(
        tmp / "gw",
        policies,
        keys={
            "k": {"tenant": "acme", "scopes": ["read", "write"]},
            "k2": {"tenant": "acme", "scopes": ["read", "write"]},
            "reader": {"tenant": "acme", "scopes": ["read"]},
        },
    )
    with running(gw):
        yield gw, events


Env = tuple[Gateway, Path]


@contextlib.asynccontextmanager
async def sdk_session(
    url: str, headers: dict[str, str], terminate: bool = True, **kwargs: Any
) -> AsyncIterator[tuple[ClientSession, Callable[[], str | None]]]:
    async with (
        httpx.AsyncClient(headers=headers, timeout=30) as http,
        streamable_http_client(url, http_client=http, terminate_on_close=terminate) as (read, write, get_id),
        ClientSession(read, write, **kwargs) as session,
    ):
        async with asyncio.timeout(DEADLINE):
            await session.initialize()
        yield session, get_id


def text_of(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent), block
    return block.text


def stdio_children(gw: Gateway, name: str) -> list[psutil.Process]:
    """The gateway's child processes serving stdio server `name` (its --name argument), zombies included."""
    out = []
    for child in psutil.Process(gw.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            cmd = child.cmdline() if child.status() != psutil.STATUS_ZOMBIE else []
            if child.status() == psutil.STATUS_ZOMBIE or cmd[-2:] == ["--name", name]:
                out.append(child)
    return out


def churn_server_alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.cmdline()[-2:] == ["--name", "churn"]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


async def eventually(check: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.1)
    assert check(), what


async def metrics(gw: Gateway) -> str:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{gw.base}/metrics")).text


def log_records(gw: Gateway) -> list[dict[str, Any]]:
    out = []
    for line in gw.logs().splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict):
                out.append(rec)
    return out


def audit(gw: Gateway) -> list[dict[str, Any]]:
    path = gw.workdir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


async def test_session_through_the_sdk(env: Env) -> None:
    gw, _ = env
    progress: list[float] = []
    asked: list[str] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)

    async def elicit(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"confirmed": True})

    async with sdk_session(gw.url("tools"), gw.auth("k"), elicitation_callback=elicit) as (s, get_id):
        tools = await s.list_tools()
        assert {"echo", "add", "count", "confirm_action", "slow", "crash", "environ", "whoami"} <= {
            t.name for t in tools.tools
        }
        assert text_of(await s.call_tool("add", {"a": 2, "b": 40})) == "42"
        res = await s.call_tool("count", {"n": 3, "delay": 0.05}, progress_callback=on_progress)
        assert text_of(res) == "counted to 3"
        assert progress == [1, 2, 3]
        assert text_of(await s.call_tool("confirm_action", {"action": "deploy"})) == "deploy: confirmed"
        assert asked == ["Confirm deploy?"]
        pid = json.loads(text_of(await s.call_tool("whoami", {})))["pid"]
        assert psutil.pid_exists(pid)
        sid = get_id()
        assert sid
    # the SDK's DELETE on exit ended the session and its process
    await eventually(lambda: not psutil.pid_exists(pid), "the session's process ended with the session")
    records = [r for r in audit(gw) if r["server"] == "tools" and r["tool"] == "add"]
    assert records and records[-1]["decision"] == "allowed" and records[-1]["upstream"] == "stdio://process"
    text = await metrics(gw)
    assert metric_sample(text, "mcp_gateway_stdio_process_starts_total", server="tools", result="started") >= 1
    # its stderr line, in the gateway's log with the server and the session (its audit hash, never the id)
    started = [r for r in log_records(gw) if r.get("event") == "stdio server output" and r.get("server") == "tools"]
    assert any("stdio server tools starting" in r["line"] for r in started)
    assert all(r["session"].startswith(("session:", "request:")) and sid not in r["session"] for r in started)


async def test_refusal_keeps_the_session(env: Env) -> None:
    gw, _ = env
    async with sdk_session(gw.url("tools"), gw.auth("reader")) as (s, _):
        with pytest.raises(McpError) as err:
            await s.call_tool("add", {"a": 1, "b": 1})
        assert err.value.error.code == -31403
        # read methods still work on the same session (the list holds only what the key may call: no write tool)
        assert "add" not in {t.name for t in (await s.list_tools()).tools}
        await s.send_ping()


async def test_crash_mid_call_then_a_new_session_works(env: Env) -> None:
    gw, _ = env
    async with sdk_session(gw.url("tools"), gw.auth("k")) as (s, _):
        pid = json.loads(text_of(await s.call_tool("whoami", {})))["pid"]
        with pytest.raises(McpError) as err:
            await s.call_tool("crash", {})
        assert err.value.error.code == -31003
        assert "exited" in err.value.error.message
    await eventually(lambda: not psutil.pid_exists(pid), "the crashed process was reaped")
    async with sdk_session(gw.url("tools"), gw.auth("k")) as (s, _):
        new_pid = json.loads(text_of(await s.call_tool("whoami", {})))["pid"]
        assert new_pid != pid
    text = await metrics(gw)
    assert metric_sample(text, "mcp_gateway_stdio_process_crashes_total", server="tools") >= 1


async def test_crash_before_the_first_message_is_refused_and_audited(env: Env) -> None:
    gw, _ = env
    async with httpx.AsyncClient(headers={**gw.auth("k"), **ACCEPT}, timeout=30) as http:
        r = await http.post(gw.url("tools"), json=INIT)
        sid = r.headers["Mcp-Session-Id"]
        hdrs = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"}
        await http.post(gw.url("tools"), json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=hdrs)
        # no progress token: the crash tool's progress is not sent, so the exit comes before any message
        call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "crash", "arguments": {}}}
        r = await http.post(gw.url("tools"), json=call, headers=hdrs)
        body = r.json()
        assert body["id"] == 5 and body["error"]["data"]["reason"] == "upstream_process_exited", body
        # the session went with its process: 404 tells the client to re-initialize
        r = await http.post(gw.url("tools"), json={**call, "id": 6}, headers=hdrs)
        assert r.status_code == 404
    await eventually(
        lambda: any(r.get("reason") == "upstream_process_exited" and r["rpc_id"] == "5" for r in audit(gw)),
        "the failure is audited",
    )


async def test_client_gone_mid_stream_cancels_the_call(env: Env) -> None:
    gw, events = env
    async with aiohttp.ClientSession(headers={**gw.auth("k"), **ACCEPT}) as http:
        async with http.post(gw.url("tools"), json=INIT) as r:
            sid = r.headers["Mcp-Session-Id"]
            await r.read()
        hdrs = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"}
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        async with http.post(gw.url("tools"), json=note, headers=hdrs) as r:
            assert r.status == 202
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "slow", "arguments": {"seconds": 60, "tag": "gone"}, "_meta": {"progressToken": "p"}},
        }
        async with http.post(gw.url("tools"), json=call, headers=hdrs) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            line = await r.content.readline()
            while not line.startswith(b"data:"):
                line = await r.content.readline()
            progress = json.loads(line[5:])
            assert progress["method"] == "notifications/progress" and progress["params"]["progressToken"] == "p"
            # leave mid-stream: the connection closes under the gateway
    await eventually(lambda: events.exists() and "cancelled gone" in events.read_text(), "the tool was cancelled")


# Python processes each importing the SDK (about 1.2 s of CPU apiece): 200 of them took ~4 minutes of the whole
# 2-core machine, which `make test` cannot afford within its 15 minutes. It runs 24 by default (more than the
# route's 16-process cap, so processes must go before new sessions get theirs); the 200 with
# STDIO_CHURN_SESSIONS=200 (run on 2026-12-07: passed).
CHURN_SESSIONS = int(os.environ.get("STDIO_CHURN_SESSIONS", "24"))


@pytest.mark.timeout(900)
async def test_many_sessions_leave_no_process(env: Env) -> None:
    gw, _ = env
    n = CHURN_SESSIONS
    pids: set[int] = set()
    sem = asyncio.Semaphore(8)

    async def one(http: httpx.AsyncClient, i: int) -> None:
        async with sem:
            r = await http.post(gw.url("churn"), json=INIT)
            assert r.status_code == 200, r.text
            hdrs = {"Mcp-Session-Id": r.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-06-18"}
            await http.post(
                gw.url("churn"), json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=hdrs
            )
            call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
            r = await http.post(gw.url("churn"), json=call, headers=hdrs)
            pids.add(json.loads(r.json()["result"]["content"][0]["text"])["pid"])
            assert (await http.delete(gw.url("churn"), headers=hdrs)).status_code == 200

    async with httpx.AsyncClient(headers={**gw.auth("k2"), **ACCEPT}, timeout=120) as http:
        await asyncio.gather(*(one(http, i) for i in range(n)))
    assert len(pids) == n
    await eventually(lambda: not stdio_children(gw, "churn"), f"no process of the {n} sessions is left", 120)
    # not orphaned either: no live process with one of those pids still runs the churn server (the machine reuses
    # pids under load, so a pid alone could name another test's process)
    assert not [p for p in pids if churn_server_alive(p)]
    text = await metrics(gw)
    assert metric_sample(text, "mcp_gateway_stdio_processes", server="churn") == 0
    assert metric_sample(text, "mcp_gateway_stdio_process_starts_total", server="churn", result="started") == n
    assert metric_sample(text, "mcp_gateway_stdio_process_crashes_total", server="churn") == 0


async def test_process_caps_refuse_clearly_and_are_audited(env: Env) -> None:
    gw, _ = env
    async with httpx.AsyncClient(headers={**gw.auth("k"), **ACCEPT}, timeout=30) as http:
        sids = []
        for _ in range(2):
            r = await http.post(gw.url("capped"), json=INIT)
            assert r.status_code == 200
            sids.append(r.headers["Mcp-Session-Id"])
        r = await http.post(gw.url("capped"), json=INIT)
        assert r.status_code == 429
        body = r.json()
        assert body["error"]["data"]["reason"] == "process_limit"
        assert body["error"]["data"]["limit"] == "key_processes" and body["error"]["data"]["cap"] == 2
        assert "Retry-After" in r.headers
        # another key of the tenant may start one more, then the tenant's cap (3) is reached
        r = await http.post(gw.url("capped"), json=INIT, headers=gw.auth("k2"))
        assert r.status_code == 200
        r = await http.post(gw.url("capped"), json=INIT, headers=gw.auth("k2"))
        assert r.status_code == 429 and r.json()["error"]["data"]["limit"] == "tenant_processes"
        # ending a session gives its place back
        await http.delete(gw.url("capped"), headers={"Mcp-Session-Id": sids[0]})
        # its process reaped, its place given back (the gauge moves with the place)
        async with asyncio.timeout(DEADLINE):
            while metric_sample(await metrics(gw), "mcp_gateway_stdio_processes", server="capped") != 2:
                await asyncio.sleep(0.1)
        assert len(stdio_children(gw, "capped")) == 2
        r = await http.post(gw.url("capped"), json=INIT)
        assert r.status_code == 200
    await eventually(
        lambda: any(r["server"] == "capped" and r.get("reason") == "process_limit" for r in audit(gw)),
        "refusals are audited",
    )
    text = await metrics(gw)
    assert metric_sample(text, "mcp_gateway_stdio_process_refused_total", server="capped", limit="key_processes") == 1


async def test_idle_session_ends_with_its_process(env: Env) -> None:
    gw, _ = env
    async with sdk_session(gw.url("idle"), gw.auth("k"), terminate=False) as (s, _):
        pid = json.loads(text_of(await s.call_tool("whoami", {})))["pid"]
    # the client left without DELETE: its GET stream closed, nothing more arrives, the idle timeout (1 s) ends it
    await eventually(lambda: not psutil.pid_exists(pid), "the idle session's process ended")


async def test_shared_process_serves_every_session(env: Env) -> None:
    gw, _ = env
    progress: dict[str, list[float]] = {"a": [], "b": []}

    async def run(who: str) -> int:
        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress[who].append(p)

        async with sdk_session(gw.url("shared"), gw.auth("k")) as (s, _):
            # both clients use the same JSON-RPC ids and progress tokens: the gateway keeps them apart
            res = await s.call_tool("count", {"n": 3, "delay": 0.05}, progress_callback=on_progress)
            assert text_of(res) == "counted to 3"
            return int(json.loads(text_of(await s.call_tool("whoami", {})))["pid"])

    a, b = await asyncio.gather(run("a"), run("b"))
    assert a == b
    assert progress == {"a": [1, 2, 3], "b": [1, 2, 3]}
    assert psutil.pid_exists(a)  # sessions ended, the shared process stays
    text = await metrics(gw)
    assert metric_sample(text, "mcp_gateway_upstream_health_checks_total", server="shared", result="ok") >= 1


async def test_modern_requests_reach_stdio_servers(env: Env) -> None:
    gw, _ = env
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    call = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "add", "arguments": {"a": 20, "b": 22}, "_meta": meta},
    }
    hdrs = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "add"}
    async with httpx.AsyncClient(headers={**gw.auth("k"), **ACCEPT}, timeout=30) as http:
        for server in ("tools", "shared"):
            r = await http.post(gw.url(server), json=call, headers=hdrs)
            assert r.status_code == 200, r.text
            assert r.json()["result"]["content"][0]["text"] == "42"


async def test_a_process_ignoring_sigterm_is_killed_and_reaped(env: Env) -> None:
    gw, _ = env
    async with sdk_session(gw.url("stubborn"), gw.auth("k")) as (s, _):
        pid = json.loads(text_of(await s.call_tool("whoami", {})))["pid"]
        assert text_of(await s.call_tool("stubborn", {})) == "stubborn"
    # stdin closed and SIGTERM ignored: SIGKILL after stop_grace_seconds, then reaped (no zombie)
    await eventually(lambda: not psutil.pid_exists(pid), "the stubborn process was killed and reaped")
    assert not stdio_children(gw, "stubborn")


async def test_stderr_lines_are_cut_and_rate_limited(env: Env) -> None:
    gw, _ = env
    async with sdk_session(gw.url("stubborn"), gw.auth("k")) as (s, _):
        assert text_of(await s.call_tool("shout", {"lines": 200, "size": 500})) == "shouted"
    await eventually(lambda: "[cut]" in gw.logs(), "a long stderr line is cut and marked")
    logged = [
        rec["line"]
        for rec in log_records(gw)
        if rec.get("event") == "stdio server output" and rec.get("server") == "stubborn" and "shout" in rec["line"]
    ]
    assert logged and len(logged) < 200
    assert all(len(line) <= 100 + len(" [cut]") for line in logged)

    async def dropped() -> float:
        return metric_sample(
            await metrics(gw), "mcp_gateway_stdio_stderr_lines_total", server="stubborn", result="dropped"
        )

    async with asyncio.timeout(DEADLINE):
        while await dropped() == 0:
            await asyncio.sleep(0.2)


async def test_crashes_open_the_breaker(env: Env) -> None:
    gw, _ = env
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "crash", "arguments": {}}}
    async with httpx.AsyncClient(headers={**gw.auth("k"), **ACCEPT}, timeout=30) as http:
        for _ in range(2):
            r = await http.post(gw.url("fragile"), json=INIT)
            assert r.status_code == 200, r.text
            hdrs = {"Mcp-Session-Id": r.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-06-18"}
            r = await http.post(gw.url("fragile"), json=call, headers=hdrs)
            assert r.json()["error"]["data"]["reason"] == "upstream_process_exited"
        # two crashes in four calls: the breaker is open, nothing is started
        r = await http.post(gw.url("fragile"), json=INIT)
        assert r.status_code == 503
        assert r.json()["error"]["data"]["reason"] == "circuit_open"
    text = await metrics(gw)
    assert metric_sample(text, "mcp_gateway_stdio_process_starts_total", server="fragile", result="started") == 2


async def test_process_memory_and_cpu_are_in_metrics(env: Env) -> None:
    gw, _ = env
    async with sdk_session(gw.url("shared"), gw.auth("k")) as (s, _):
        await s.call_tool("whoami", {})

    async def rss() -> float:
        return metric_sample(await metrics(gw), "mcp_gateway_stdio_process_resident_bytes", server="shared")

    async with asyncio.timeout(DEADLINE):
        while await rss() == 0:
            await asyncio.sleep(0.5)
    assert await rss() > 1_000_000  # a Python process holds megabytes


async def test_another_callers_session_id_is_refused(env: Env) -> None:
    gw, _ = env
    ping = {"jsonrpc": "2.0", "id": 3, "method": "ping"}
    async with httpx.AsyncClient(headers=ACCEPT, timeout=30) as http:
        r = await http.post(gw.url("tools"), json=INIT, headers=gw.auth("k"))
        hdrs = {"Mcp-Session-Id": r.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-06-18"}
        # another key of the same tenant presenting the id: 404, like an unknown session, and nothing reaches it
        for method in ("POST", "GET", "DELETE"):
            r = await http.request(
                method, gw.url("tools"), json=ping if method == "POST" else None, headers={**hdrs, **gw.auth("k2")}
            )
            assert r.status_code == 404, (method, r.text)
        r = await http.post(gw.url("tools"), json=ping, headers={**hdrs, **gw.auth("k")})
        assert r.status_code == 200 and r.json()["result"] == {}
        await http.delete(gw.url("tools"), headers={**hdrs, **gw.auth("k")})
