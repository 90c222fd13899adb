"""Graceful drain: SIGTERM while slow tool calls run stops accepting, lets every call return its result, ends the
server-sent event stream cleanly, flushes audit (one record per request) and exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import httpx
import orjson
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

from tests.harness import Gateway, default_policies, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}
CALLS = 3
STEPS = 4
STEP_DELAY = 0.5


def audit_records(gw: Gateway) -> list[dict[str, object]]:
    path = gw.workdir / "audit.jsonl"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _json_line(line: str) -> dict[str, object]:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}


async def slow_call(gw: Gateway, started: asyncio.Event, progressed: list[int], results: list[str]) -> None:
    try:
        async with streamablehttp_client(gw.url(), headers=gw.auth("k1")) as (r, w, _), ClientSession(r, w) as s:
            await s.initialize()
            # the SDK validates a tool result against the tool's output schema and lists tools to learn it if
            # it has not yet: do that now, while the gateway still accepts connections
            await s.list_tools()

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                progressed.append(1)
                started.set()

            res = await s.call_tool("count", {"n": STEPS, "delay": STEP_DELAY}, progress_callback=on_progress)
            results.append(res.content[0].text)  # type: ignore[union-attr]
    except* httpx.ConnectError:
        # leaving the session: the SDK re-opens its ended GET stream and says goodbye (DELETE) to a gateway that
        # has stopped by then; with replicas it would reach another one
        pass


async def open_event_stream(gw: Gateway, client: httpx.AsyncClient) -> tuple[httpx.Response, str]:
    r = await client.post(gw.url(), headers={**HEADERS, **gw.auth("k1")}, json=INIT)
    assert r.status_code == 200
    sid = r.headers["mcp-session-id"]
    req = client.build_request(
        "GET",
        gw.url(),
        headers={
            **gw.auth("k1"),
            "Accept": "text/event-stream",
            "Mcp-Session-Id": sid,
            "MCP-Protocol-Version": "2025-06-18",
        },
    )
    resp = await client.send(req, stream=True)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    return resp, sid


async def test_sigterm_lets_in_flight_calls_finish_and_flushes_audit(tmp_path: Path) -> None:
    up = start_upstream(tmp_path)
    gw = start_gateway(
        tmp_path / "gw",
        default_policies(up.url),
        keys={"k1": {"tenant": "acme", "scopes": ["read", "write"]}},
        # a slow audit flush interval: records are still queued in memory at SIGTERM unless cleanup flushes them
        config={"http": {"shutdown_grace_seconds": 15}, "audit": {"flush_interval": 5.0}},
    )
    with running(gw, up):
        async with httpx.AsyncClient(timeout=httpx.Timeout(30)) as raw:
            stream, _ = await open_event_stream(gw, raw)
            starts = [asyncio.Event() for _ in range(CALLS)]
            progressed: list[int] = []
            results: list[str] = []
            calls = [asyncio.create_task(slow_call(gw, ev, progressed, results)) for ev in starts]
            async with asyncio.timeout(20):
                await asyncio.gather(*(ev.wait() for ev in starts))
            assert not any(t.done() for t in calls)  # every call is in flight at SIGTERM
            # the raw client's and every SDK session's GET stream are open: the stream gauge counts them
            expected = f'mcp_gateway_streams_open{{kind="sse"}} {float(CALLS + 1)}'
            deadline = time.monotonic() + 10
            while expected not in (await raw.get(f"{gw.base}/metrics")).text.splitlines():
                assert time.monotonic() < deadline, "stream gauge never counted the open streams"
                await asyncio.sleep(0.05)

            gw.proc.signal(signal.SIGTERM)

            # stop accepting: new connections are refused while the calls are still running
            refused = False
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not refused:
                try:
                    async with httpx.AsyncClient() as c:
                        await c.get(f"{gw.base}/healthz")
                except httpx.ConnectError:
                    refused = True
                else:
                    await asyncio.sleep(0.05)
            assert refused

            # the server stream ends cleanly (final chunk), not with a broken transfer
            async with asyncio.timeout(20):
                async for _ in stream.aiter_raw():
                    pass
            await stream.aclose()

            async with asyncio.timeout(30):
                await asyncio.gather(*calls)
            assert results == [f"counted to {STEPS}"] * CALLS
            assert len(progressed) == CALLS * STEPS

        assert gw.proc.popen is not None
        assert gw.proc.popen.wait(30) == 0

    # one audit record per request that reached the gateway: the raw client's initialize and GET stream, and per
    # SDK session initialize, notifications/initialized, its GET stream, tools/list and tools/call
    records = audit_records(gw)
    by_kind: dict[str, int] = {}
    for r in records:
        kind = str(r.get("rpc_method") or r.get("http_method"))
        by_kind[kind] = by_kind.get(kind, 0) + 1
    assert by_kind == {
        "initialize": CALLS + 1,
        "notifications/initialized": CALLS,
        "GET": CALLS + 1,
        "tools/list": CALLS,
        "tools/call": CALLS,
    }
    assert all(r["decision"] == "allowed" and r["http_status"] in (200, 202) for r in records)
    drained = [e for e in map(_json_line, gw.logs().splitlines()) if e.get("event") == "drained"]
    assert len(drained) == 1 and drained[0]["in_flight_finished"] is True
    with contextlib.suppress(FileNotFoundError):
        assert (gw.workdir / "spool.jsonl").stat().st_size == 0


async def test_sigterm_ends_a_legacy_sse_stream_cleanly(tmp_path: Path) -> None:
    up = start_upstream(tmp_path, transport="sse")
    gw = start_gateway(
        tmp_path / "gw",
        default_policies(up.url, transport="sse"),
        keys={"k1": {"tenant": "acme", "scopes": ["read", "write"]}},
        config={"http": {"shutdown_grace_seconds": 120}},
    )
    with running(gw, up):
        async with httpx.AsyncClient(timeout=httpx.Timeout(30)) as raw:
            req = raw.build_request("GET", gw.url(), headers={**gw.auth("k1"), "Accept": "text/event-stream"})
            stream = await raw.send(req, stream=True)
            assert stream.status_code == 200
            received = b""
            chunks = stream.aiter_raw()
            async with asyncio.timeout(20):
                while b"event: endpoint" not in received:
                    received += await anext(chunks)

            gw.proc.signal(signal.SIGTERM)
            # the stream ends with its final chunk (an abrupt close would raise RemoteProtocolError here), long
            # before the 120 s grace period
            async with asyncio.timeout(20):
                async for _ in chunks:
                    pass
            await stream.aclose()
        assert gw.proc.popen is not None
        assert await asyncio.to_thread(gw.proc.popen.wait, 30) == 0
    streams = [r for r in audit_records(gw) if r.get("http_method") == "GET"]
    assert len(streams) == 1


async def test_a_call_outliving_the_grace_period_is_cut_and_still_audited(tmp_path: Path) -> None:
    up = start_upstream(tmp_path)
    gw = start_gateway(
        tmp_path / "gw",
        default_policies(up.url),
        keys={"k1": {"tenant": "acme", "scopes": ["read", "write"]}},
        config={"http": {"shutdown_grace_seconds": 1}},
    )
    with running(gw, up):
        headers = {**HEADERS, **gw.auth("k1"), "MCP-Protocol-Version": "2025-06-18"}
        async with httpx.AsyncClient(timeout=httpx.Timeout(30)) as raw:
            r = await raw.post(gw.url(), headers=headers, json=INIT)
            headers["Mcp-Session-Id"] = r.headers["mcp-session-id"]
            r = await raw.post(
                gw.url(), headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"}
            )
            assert r.status_code == 202
            call = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "count", "arguments": {"n": 100, "delay": 0.5}, "_meta": {"progressToken": "p"}},
            }
            stream = await raw.send(raw.build_request("POST", gw.url(), headers=headers, json=call), stream=True)
            chunks = stream.aiter_raw()
            received = b""
            async with asyncio.timeout(20):
                while b"notifications/progress" not in received:
                    received += await anext(chunks)
            gw.proc.signal(signal.SIGTERM)
            with contextlib.suppress(httpx.HTTPError):
                async with asyncio.timeout(20):
                    async for chunk in chunks:
                        received += chunk
            await stream.aclose()
            assert b"counted to 100" not in received
        assert gw.proc.popen is not None
        assert await asyncio.to_thread(gw.proc.popen.wait, 30) == 0
    drained = [e for e in map(_json_line, gw.logs().splitlines()) if e.get("event") == "drained"]
    assert len(drained) == 1 and drained[0]["in_flight_finished"] is False and int(str(drained[0]["cancelled"])) >= 1
    calls = [r for r in audit_records(gw) if r.get("rpc_method") == "tools/call"]
    assert len(calls) == 1
