"""A session's GET event stream, or a legacy HTTP+SSE stream, of an API key revoked afterwards does not stay open:
the reload that revokes the key (keys.yaml `revoked: true`) ends it, and so does a revocation through the admin API
(a PostgreSQL key) on the replica that made it, as every later request of the key is refused. Before, the stream
went on delivering the session's server messages to whoever held the revoked key. Another key's stream is untouched.

Raw HTTP (aiohttp) against the SDK example upstream through a real gateway process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.db.scratch import scratch_database
from tests.harness import Gateway, default_policies, metric_sample, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e

GUARD = 30.0  # a hang guard, never a timing assertion
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


async def _open_stream(http: aiohttp.ClientSession, gw: Gateway, key: str) -> aiohttp.ClientResponse:
    async with http.post(gw.url(), json=INIT, headers={**ACCEPT, **gw.auth(key)}) as r:
        assert r.status == 200, await r.text()
        sid = r.headers["Mcp-Session-Id"]
        await r.read()
    sess = {**gw.auth(key), "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"}
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    async with http.post(gw.url(), json=note, headers={**ACCEPT, **sess}) as r:
        assert r.status == 202
    stream = await http.get(gw.url(), headers={**sess, "Accept": "text/event-stream"})
    assert stream.status == 200, await stream.text()
    return stream


async def _metric(http: aiohttp.ClientSession, gw: Gateway, name: str, **labels: str) -> float:
    async with http.get(f"{gw.base}/metrics") as r:
        return metric_sample(await r.text(), name, **labels)


def _revoke(gw: Gateway, key_id: str) -> None:
    path = gw.policies_dir / "keys.yaml"
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    for entry in doc["keys"]:
        if entry["id"] == key_id:
            entry["revoked"] = True
    gw.write_policies({"keys.yaml": doc})


async def test_a_get_stream_of_a_key_revoked_by_a_reload_is_ended(tmp_path: Path) -> None:
    up = start_upstream(tmp_path)
    keys = {"alice": {"tenant": "acme", "scopes": ["read"]}, "bob": {"tenant": "acme", "scopes": ["read"]}}
    gw = start_gateway(tmp_path / "gw", default_policies(up.url), keys=keys)
    with running(gw, up):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
            alice = await _open_stream(http, gw, "alice")
            bob = await _open_stream(http, gw, "bob")
            async with asyncio.timeout(GUARD):
                while await _metric(http, gw, "mcp_gateway_streams_open", kind="sse") < 2:
                    await asyncio.sleep(0.05)
            _revoke(gw, "alice")
            async with asyncio.timeout(GUARD):
                # the stream ends (EOF) once the reload is in force; keep-alive comments may come before
                while await alice.content.readany():
                    pass
            alice.release()
            async with asyncio.timeout(GUARD):
                while await _metric(http, gw, "mcp_gateway_streams_open", kind="sse") > 1:
                    await asyncio.sleep(0.05)
            assert not bob.content.at_eof()  # the other key's stream is still open
            async with http.post(gw.url(), json=INIT, headers={**ACCEPT, **gw.auth("alice")}) as r:
                assert r.status == 401 and (await r.json())["error"]["data"]["reason"] == "key_revoked"
            bob.release()


@pytest.fixture
async def own_db(postgres_dsn: str) -> AsyncIterator[str]:
    async with scratch_database(postgres_dsn, prefix="mgw_streamrev_") as dsn:
        yield dsn


async def test_a_get_stream_of_a_key_revoked_through_the_admin_api_is_ended(tmp_path: Path, own_db: str) -> None:
    up = start_upstream(tmp_path)
    keys = {"adm": {"tenant": "acme", "scopes": ["read", "write", "admin"]}}
    config = {"postgres": {"dsn": own_db}, "api_keys": {"cache_seconds": 60.0}}  # no help from the cache's expiry
    gw = start_gateway(tmp_path / "gw", default_policies(up.url), keys=keys, config=config)
    with running(gw, up):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
            async with http.post(f"{gw.base}/admin/keys", json={"scopes": ["read"]}, headers=gw.auth("adm")) as r:
                assert r.status == 201, await r.text()
                made = await r.json()
            gw.keys["pg"] = made["key"]
            stream = await _open_stream(http, gw, "pg")
            async with http.delete(f"{gw.base}/admin/keys/{made['id']}", headers=gw.auth("adm")) as r:
                assert r.status == 200, await r.text()
            async with asyncio.timeout(GUARD):
                while await stream.content.readany():
                    pass
            stream.release()


async def _open_legacy_stream(http: aiohttp.ClientSession, gw: Gateway, key: str) -> aiohttp.ClientResponse:
    stream = await http.get(gw.url("legacy"), headers={**gw.auth(key), "Accept": "text/event-stream"})
    assert stream.status == 200, await stream.text()
    seen = b""
    async with asyncio.timeout(GUARD):
        while b"event: endpoint" not in seen:  # the session exists once its endpoint is named
            chunk = await stream.content.readany()
            assert chunk, seen
            seen += chunk
    return stream


async def test_a_legacy_sse_stream_of_a_key_revoked_by_a_reload_is_ended(tmp_path: Path) -> None:
    """A legacy (2024-11-05) stream is its session: it carries every answer, so a revoked key's stream must end too
    (red team: it stayed open)."""
    up = start_upstream(tmp_path, transport="sse")
    policies = default_policies(up.url)
    policies["servers.yaml"] = {
        "servers": {"legacy": {"upstreams": [{"url": up.url}], "owner": "acme", "transport": "sse"}}
    }
    policies["tenants.yaml"] = {"tenants": {"acme": {"servers": ["legacy"]}}}
    keys = {"alice": {"tenant": "acme", "scopes": ["read"]}, "bob": {"tenant": "acme", "scopes": ["read"]}}
    gw = start_gateway(tmp_path / "gw", policies, keys=keys)
    with running(gw, up):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
            alice = await _open_legacy_stream(http, gw, "alice")
            bob = await _open_legacy_stream(http, gw, "bob")
            _revoke(gw, "alice")
            async with asyncio.timeout(GUARD):
                while await alice.content.readany():
                    pass
            alice.release()
            assert not bob.content.at_eof()
            # the other key's stream is still open at the gateway, not merely not read to its end yet: the gauge
            # comes down to one (alice's stream is counted out just after its last byte) and stays there
            async with asyncio.timeout(GUARD):
                while True:
                    async with http.get(f"{gw.base}/metrics") as m:
                        open_streams = metric_sample(await m.text(), "mcp_gateway_legacy_sse_streams", server="legacy")
                    if open_streams <= 1:
                        break
                    await asyncio.sleep(0.05)
            assert open_streams == 1
            async with http.get(gw.url("legacy"), headers={**gw.auth("alice"), "Accept": "text/event-stream"}) as r:
                assert r.status == 401 and (await r.json())["error"]["data"]["reason"] == "key_revoked"
            bob.release()
    records = [json.loads(line) for line in (gw.workdir / "audit.jsonl").read_text().splitlines()]
    ended = [r for r in records if r.get("key_id") == "alice" and r.get("http_method") == "GET"]
    assert [r["notes"].get("stream_error") for r in ended if r["http_status"] == 200] == ["credential_gone"]
