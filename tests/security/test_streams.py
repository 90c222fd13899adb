"""Idle streams must not starve an upstream for everyone (issue 15, item 1), each through a real gateway process in
front of the SDK example server.

Before: every GET event stream held a connection of the upstream's request pool and cost nothing against limits,
so one key holding as many idle streams as the pool had connections made every other tenant's calls wait and fail
with 503 `upstream_pool_exhausted`. Now streams have a pool of their own per upstream (`pool.max_streams`), every
key and tenant has an open-stream cap by default (`limits.streams`: 16 and 64), and a full stream pool is shared
fairly among tenants (`stream_share_exceeded`).

Tenants: `hog` (keys `hog`, `hog1`..`hog4`) holds idle streams; `beta` (key `beta`) is everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Gateway, Upstream, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
VERSION = "2025-06-18"
CONCURRENCY_LIMITED = -31031
NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=10)
RW = ["read", "write"]


def _policies(upstream: Upstream, pool: dict[str, Any], tenants: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "servers.yaml": {"servers": {"example": {"upstreams": [{"url": upstream.url}], "pool": pool}}},
        "tenants.yaml": {
            "tenants": tenants or {"hog": {"servers": ["example"]}, "beta": {"servers": ["example"]}},
        },
        "keys.yaml": {"keys": []},
        "limits.yaml": {},
        "access.yaml": {"rules": []},
    }


async def _session(http: aiohttp.ClientSession, gw: Gateway, key: str) -> dict[str, str]:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "sec", "version": "1"}},
    }
    async with http.post(gw.url(), json=init, headers={**ACCEPT, **gw.auth(key)}) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
        sid = resp.headers["Mcp-Session-Id"]
    headers = {**gw.auth(key), "Mcp-Session-Id": sid, "MCP-Protocol-Version": VERSION}
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    async with http.post(gw.url(), json=note, headers={**ACCEPT, **headers}) as resp:
        assert resp.status == 202
    return headers


class Streams:
    """GET event streams held open and read in the background, as an idle SDK client holds them."""

    def __init__(self, http: aiohttp.ClientSession, gw: Gateway) -> None:
        self.http = http
        self.gw = gw
        self.open: list[tuple[aiohttp.ClientResponse, asyncio.Task[None]]] = []

    async def get(self, key: str) -> tuple[int, Any, aiohttp.ClientResponse]:
        """Open one session and its GET stream: (status, error body or None, response)."""
        headers = await _session(self.http, self.gw, key)
        resp = await self.http.get(self.gw.url(), headers={**headers, "Accept": "text/event-stream"})
        if resp.status != 200:
            body = await resp.json()
            resp.release()
            return resp.status, body, resp
        assert resp.content_type == "text/event-stream"
        self.open.append((resp, asyncio.create_task(self._read(resp))))
        return 200, None, resp

    @staticmethod
    async def _read(resp: aiohttp.ClientResponse) -> None:
        # raises if the stream is cut; returns when it ends normally
        async for _ in resp.content.iter_any():
            pass

    def task(self, resp: aiohttp.ClientResponse) -> asyncio.Task[None]:
        return next(t for r, t in self.open if r is resp)

    async def close(self) -> None:
        for resp, task in self.open:
            task.cancel()
            resp.close()
        for _, task in self.open:
            with contextlib.suppress(BaseException):
                await task


@contextlib.asynccontextmanager
async def _client(gw: Gateway) -> AsyncIterator[tuple[aiohttp.ClientSession, Streams]]:
    async with aiohttp.ClientSession(timeout=NO_TIMEOUT) as http:
        streams = Streams(http, gw)
        try:
            yield http, streams
        finally:
            await streams.close()


async def _metrics(http: aiohttp.ClientSession, gw: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with http.get(f"{gw.base}/metrics") as resp:
        text = await resp.text()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _metric(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, lbl), v in values.items() if n == name and all((k, labels[k]) in lbl for k in labels))


def _audit(gw: Gateway) -> list[dict[str, Any]]:
    path = gw.workdir / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _audited(gw: Gateway, pred: Any, n: int) -> list[dict[str, Any]]:
    """The audit records matching `pred` once there are at least `n` (the writer batches for a moment)."""
    for _ in range(100):
        found = [r for r in _audit(gw) if pred(r)]
        if len(found) >= n:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"expected {n} audit records, found {len([r for r in _audit(gw) if pred(r)])}")


async def _call(http: aiohttp.ClientSession, gw: Gateway, headers: dict[str, str], n: int) -> int:
    """One tools/call `add`; its status (and, when 200, the sum checked)."""
    body = {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "add", "arguments": {"a": n, "b": 1}}}
    async with http.post(gw.url(), json=body, headers={**ACCEPT, **headers}) as resp:
        if resp.status == 200:
            assert resp.content_type == "application/json"
            answer = await resp.json()
            assert answer["result"]["content"][0]["text"] == str(n + 1), answer
        else:
            await resp.read()
        return resp.status


def _refusal(status: int, body: Any, reason: str, limit: str) -> None:
    assert status == 429, (status, body)
    err = body["error"]
    assert err["code"] == CONCURRENCY_LIMITED
    assert err["data"]["reason"] == reason
    assert err["data"]["limit"] == limit
    assert err["data"]["retryAfterSeconds"] >= 1


async def test_one_keys_idle_streams_do_not_starve_other_tenants_calls(tmp_path: Path) -> None:
    """The issue's fault: one key opens idle GET streams, more than the upstream's request pool has connections.
    Another tenant's calls keep succeeding; the hog is refused beyond its default per-key cap (16)."""
    up = start_upstream(tmp_path, json_response=True)
    # a request pool smaller than the hog's 16 streams: before the fix, the 9th stream waited and every other call
    # got 503 upstream_pool_exhausted
    pol = _policies(up, {"max_connections": 8, "max_wait_seconds": 2})
    gw = start_gateway(
        tmp_path / "gw", pol, keys={"hog": {"tenant": "hog", "scopes": RW}, "beta": {"tenant": "beta", "scopes": RW}}
    )
    with running(gw, up):
        async with _client(gw) as (http, streams):
            results = [await streams.get("hog") for _ in range(20)]
            assert [s for s, _, _ in results[:16]] == [200] * 16
            for status, body, resp in results[16:]:
                _refusal(status, body, "concurrency_limited", "key_streams")
                assert int(resp.headers["Retry-After"]) >= 1
            values = await _metrics(http, gw)
            assert _metric(values, "mcp_gateway_upstream_streams", state="open") == 16
            assert _metric(values, "mcp_gateway_ratelimit_refusals_total", tier="key_streams", mode="enforce") == 4

            beta = await _session(http, gw, "beta")
            for round_ in range(3):
                statuses = await asyncio.gather(*(_call(http, gw, beta, 100 * round_ + i) for i in range(8)))
                assert statuses == [200] * 8
            # the hog's streams are all still open: nothing was taken from it to serve beta
            assert not any(task.done() for _, task in streams.open)
            values = await _metrics(http, gw)
            assert _metric(values, "mcp_gateway_upstream_pool_connections", state="in_use") <= 8

        refused = await _audited(gw, lambda r: r.get("key_id") == "hog" and r.get("reason") == "concurrency_limited", 4)
        assert all(r["http_method"] == "GET" and r["http_status"] == 429 for r in refused)
        assert all(r["decision"] == "refused" and r["stage"] == "ratelimit" for r in refused)
        assert all((r.get("notes") or {}).get("limit") == "key_streams" for r in refused)


async def test_a_tenants_keys_together_are_capped_at_the_default_tenant_cap(tmp_path: Path) -> None:
    """Spreading idle streams over many keys does not get around the cap: 64 per tenant by default."""
    up = start_upstream(tmp_path, json_response=True)
    keys = {f"hog{i}": {"tenant": "hog", "scopes": RW} for i in range(5)}
    keys["beta"] = {"tenant": "beta", "scopes": RW}
    gw = start_gateway(tmp_path / "gw", _policies(up, {}), keys=keys)
    with running(gw, up):
        async with _client(gw) as (http, streams):
            for i in range(4):
                got = await asyncio.gather(*(streams.get(f"hog{i}") for _ in range(16)))
                assert [s for s, _, _ in got] == [200] * 16
            status, body, _ = await streams.get("hog4")  # a fresh key, far under its own cap
            _refusal(status, body, "concurrency_limited", "tenant_streams")
            # another tenant is not held to the hog's cap
            assert (await streams.get("beta"))[0] == 200
            beta = await _session(http, gw, "beta")
            assert await _call(http, gw, beta, 7) == 200


async def test_a_tenant_over_its_share_of_an_upstreams_streams_is_refused_first(tmp_path: Path) -> None:
    """A hog with its caps lifted fills the upstream's whole stream pool (6). It is refused beyond it with
    `stream_share_exceeded`; another tenant still gets streams, each in the slot of the hog's newest stream, which
    ends cleanly, up to its fair share (3); then both are refused."""
    up = start_upstream(tmp_path, json_response=True)
    tenants = {"hog": {"servers": ["example"], "max_open_streams": 50}, "beta": {"servers": ["example"]}}
    keys = {
        "hog": {"tenant": "hog", "scopes": RW, "max_open_streams": 50},
        "beta": {"tenant": "beta", "scopes": RW},
    }
    gw = start_gateway(tmp_path / "gw", _policies(up, {"max_streams": 6}, tenants), keys=keys)
    with running(gw, up):
        async with _client(gw) as (http, streams):
            hog = [await streams.get("hog") for _ in range(6)]
            assert [s for s, _, _ in hog] == [200] * 6
            status, body, resp = await streams.get("hog")
            _refusal(status, body, "stream_share_exceeded", "upstream_streams")
            assert int(resp.headers["Retry-After"]) >= 1

            for n in range(1, 4):
                assert (await streams.get("beta"))[0] == 200
                victim = streams.task(hog[6 - n][2])  # the hog's newest stream still open
                await asyncio.wait_for(victim, 10)  # ended normally: no exception, not cut mid-event
            assert not any(streams.task(r).done() for _, _, r in hog[:3])

            status, body, _ = await streams.get("beta")  # beta now holds its share: 6 // 2
            _refusal(status, body, "stream_share_exceeded", "upstream_streams")
            status, body, _ = await streams.get("hog")  # and so does the hog
            _refusal(status, body, "stream_share_exceeded", "upstream_streams")
            beta = await _session(http, gw, "beta")
            assert await _call(http, gw, beta, 1) == 200

            values = await _metrics(http, gw)
            origin = f"http://127.0.0.1:{up.port}"
            assert _metric(values, "mcp_gateway_upstream_streams", upstream=origin, state="open") == 6
            assert _metric(values, "mcp_gateway_upstream_streams", upstream=origin, state="limit") == 6
            assert _metric(values, "mcp_gateway_upstream_stream_tenants", upstream=origin) == 2
            assert _metric(values, "mcp_gateway_upstream_stream_evictions_total", upstream=origin) == 3
            assert _metric(values, "mcp_gateway_upstream_stream_refusals_total", reason="stream_share_exceeded") == 3

        refused = await _audited(gw, lambda r: r.get("reason") == "stream_share_exceeded", 3)
        # the audit has what the client is not told: the tenant's share and what it held (alone: the whole pool)
        shares = sorted(
            (r["key_id"], r["notes"]["stream_share"]["share"], r["notes"]["stream_share"]["held"]) for r in refused
        )
        assert shares == [("beta", 3, 3), ("hog", 3, 3), ("hog", 6, 6)]
        assert all(
            r["http_status"] == 429 and r["decision"] == "refused" and r["stage"] == "ratelimit" for r in refused
        )
        ended = await _audited(gw, lambda r: (r.get("notes") or {}).get("stream_ended") == "stream_share", 3)
        assert all(r["key_id"] == "hog" and r["http_status"] == 200 for r in ended)


async def test_normal_sdk_sessions_with_their_get_streams_are_unaffected(tmp_path: Path) -> None:
    """While a hog holds all the streams its cap allows, official SDK sessions of another key (each opening its GET
    stream after initialize) work as usual, several at once, and their streams are admitted."""
    up = start_upstream(tmp_path, json_response=True)
    keys = {"hog": {"tenant": "hog", "scopes": RW}, "beta": {"tenant": "beta", "scopes": RW}}
    gw = start_gateway(tmp_path / "gw", _policies(up, {"max_connections": 8}), keys=keys)
    with running(gw, up):
        async with _client(gw) as (http, streams):
            got = await asyncio.gather(*(streams.get("hog") for _ in range(16)))
            assert [s for s, _, _ in got] == [200] * 16

            all_open = asyncio.Event()

            async def sdk_session(n: int) -> str:
                async with (
                    httpx.AsyncClient(headers=gw.auth("beta"), timeout=30) as client,
                    streamable_http_client(gw.url(), http_client=client) as (r, w, _),
                    ClientSession(r, w) as s,
                ):
                    await s.initialize()
                    tools = await s.list_tools()
                    assert "add" in {t.name for t in tools.tools}
                    result = await s.call_tool("add", {"a": n, "b": 1})
                    # the SDK opens its GET stream after initialize: stay until every session's stream is held
                    await asyncio.wait_for(all_open.wait(), 30)
                    return str(result.content[0].text)  # type: ignore[union-attr]

            async def until_all_streams_open() -> None:
                while _metric(await _metrics(http, gw), "mcp_gateway_upstream_streams", state="open") < 16 + 4:
                    await asyncio.sleep(0.05)
                all_open.set()

            watcher = asyncio.create_task(until_all_streams_open())
            try:
                assert await asyncio.gather(*(sdk_session(n) for n in range(4))) == ["1", "2", "3", "4"]
            finally:
                watcher.cancel()
        # each stream's record is written when it ends (here, when its session closed)
        gets = await _audited(gw, lambda r: r.get("key_id") == "beta" and r.get("http_method") == "GET", 4)
        assert all(r["http_status"] == 200 and r.get("reason") is None for r in gets)
