"""The audit trail through a real gateway process: refusals recorded with their stage (file and PostgreSQL
sinks), no credential in any record or log, and the admin query API scoped to the caller's tenant by RLS."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

from tests.conftest import problem_reason
from tests.harness import (
    Gateway,
    PostgresInstance,
    default_policies,
    free_port,
    running,
    start_gateway,
    start_upstream,
)
from tests.integration.test_db_migrations import cli, temp_database

pytestmark = pytest.mark.integration

BAD_KEY = "mgw_k1_thisIsNotTheRightSecret0123456789"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
CALL = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 1, "b": 2}}}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def post(gw: Gateway, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(gw.url(), content=orjson.dumps(body), headers={**ACCEPT, **headers})


async def sdk_call(gw: Gateway, key_id: str) -> None:
    async with streamablehttp_client(gw.url(), headers=gw.auth(key_id)) as (r, w, _), ClientSession(r, w) as s:
        await s.initialize()
        res = await s.call_tool("add", {"a": 2, "b": 40})
        assert res.content[0].text == "42"  # type: ignore[union-attr]


async def drive_refusals(gw: Gateway) -> None:
    """A bad key, no key, a scope refusal and a rate-limit refusal; each status is checked (the gateways here send
    statuses as they are, `compat_status_200: false`, so the wire and the audit can be compared one to one)."""
    assert (await post(gw, LIST, {"Authorization": f"Bearer {BAD_KEY}"})).status_code == 401
    assert (await post(gw, LIST, {})).status_code == 401
    assert (await post(gw, CALL, gw.auth("reader"))).status_code == 403
    statuses = [(await post(gw, LIST, gw.auth("limited"))).status_code for _ in range(3)]
    assert 429 in statuses, statuses


async def drive_breaker_and_body_cap(gw: Gateway) -> None:
    """An unreachable upstream (502, forward error) opens its breaker (503), and a body over the cap (413)."""
    async with httpx.AsyncClient(timeout=10) as client:
        url = f"{gw.base}/mcp/dead"
        first = await client.post(url, content=orjson.dumps(LIST), headers={**ACCEPT, **gw.auth("user")})
        assert first.status_code == 502, first.text
        second = await client.post(url, content=orjson.dumps(LIST), headers={**ACCEPT, **gw.auth("user")})
        assert second.status_code == 503, second.text
        big = b'{"jsonrpc":"2.0","id":9,"method":"tools/list","params":{"x":"' + b"a" * 70_000 + b'"}}'
        resp = await client.post(gw.url(), content=big, headers={**ACCEPT, **gw.auth("user")})
        assert resp.status_code == 413, resp.text


KEYS: dict[str, dict[str, Any]] = {
    "user": {"tenant": "acme", "scopes": ["read", "write"]},
    "reader": {"tenant": "acme", "scopes": ["read"]},
    "limited": {"tenant": "acme", "scopes": ["read"], "rate_limit": {"rate": 1, "per": "minute", "burst": 1}},
}


def refusal(records: list[dict[str, Any]], reason: str) -> dict[str, Any]:
    found = [r for r in records if r["reason"] == reason]
    assert found, f"no record with reason {reason}: {[r['reason'] for r in records]}"
    return found[0]


def check_refusals(records: list[dict[str, Any]]) -> None:
    bad = refusal(records, "unknown_key")
    assert (bad["stage"], bad["decision"], bad["http_status"], bad["risk"]) == ("authn", "refused", 401, "high")
    assert bad["tenant"] is None and bad["rpc_method"] == "tools/list"
    missing = refusal(records, "missing_credentials")
    assert (missing["stage"], missing["http_status"]) == ("authn", 401)
    scope = refusal(records, "scope_denied")
    assert (scope["stage"], scope["http_status"], scope["tenant"], scope["tool"]) == ("authz", 403, "acme", "add")
    limited = refusal(records, "rate_limited")
    assert (limited["stage"], limited["decision"], limited["http_status"]) == ("ratelimit", "refused", 429)
    assert limited["key_id"] == "limited" and limited["rpc_error_code"] is not None
    if any(r["server"] == "dead" for r in records):
        down = refusal(records, "upstream_unreachable")
        assert (down["stage"], down["decision"], down["http_status"], down["server"]) == (
            "forward",
            "error",
            502,
            "dead",
        )
        assert down["upstream"] == DEAD_URL and down["risk"] == "medium"
        opened = refusal(records, "circuit_open")
        assert (opened["stage"], opened["decision"], opened["http_status"]) == ("breaker", "refused", 503)
        big = refusal(records, "body_too_large")
        assert (big["decision"], big["http_status"], big["bytes_in"]) == ("refused", 413, 0)
        assert big["stage"] is not None
    call = [r for r in records if r["rpc_method"] == "tools/call" and r["decision"] == "allowed"]
    assert call and call[0]["tool"] == "add" and call[0]["upstream_status"] == 200
    assert call[0]["upstream"].startswith("http://127.0.0.1:") and call[0]["latency_ms"] > 0
    assert call[0]["arguments"] == {"a": 2, "b": 40}  # this server opts in to argument recording


def assert_no_secrets(gw: Gateway, *texts: str) -> None:
    secrets = [BAD_KEY, *gw.keys.values()]
    for text in texts:
        for secret in secrets:
            assert secret not in text
            assert secret.split("_", 2)[2] not in text  # the secret part alone (mgw_<id>_<secret>)


DEAD_URL = f"http://127.0.0.1:{free_port()}/mcp"


def with_dead_server(policies: dict[str, Any]) -> dict[str, Any]:
    """Adds server `dead` (nothing listens there) whose breaker opens after one failure; a 64 KiB body cap."""
    servers = policies["servers.yaml"]["servers"]
    servers["dead"] = {
        "upstreams": [{"url": DEAD_URL}],
        "owner": "acme",
        "health": {"enabled": False},
        "breaker": {"consecutive_failures": 1, "min_calls": 1, "open_seconds": 60},
        "compat_status_200": False,
    }
    servers["example"]["max_body_bytes"] = 65536
    return policies


async def test_file_sink_records_every_refusal_with_its_stage(tmp_path: Path) -> None:
    up = start_upstream(tmp_path)
    gw = start_gateway(
        tmp_path / "gw",
        with_dead_server(default_policies(up.url, audit_arguments=True, compat_status_200=False)),
        keys=KEYS,
    )
    with running(gw, up):
        await sdk_call(gw, "user")
        await drive_refusals(gw)
        await drive_breaker_and_body_cap(gw)
        async with httpx.AsyncClient(timeout=10) as client:
            metrics = (await client.get(f"{gw.base}/metrics")).text
        assert 'mcp_gateway_audit_records_dropped_total{reason="queue_full"} 0.0' in metrics
        assert "mcp_gateway_audit_queue_depth" in metrics and "mcp_gateway_audit_spool_bytes" in metrics
    assert gw.stop() == 0  # clean shutdown flushes the queue
    path = tmp_path / "gw" / "audit.jsonl"
    text = path.read_text()
    records = [orjson.loads(line) for line in text.splitlines()]
    check_refusals(records)
    assert_no_secrets(gw, text, gw.logs())
    # the structured log carries every record too
    logged = [orjson.loads(line) for line in gw.logs().splitlines() if line.startswith("{") and '"audit"' in line]
    assert {r["id"] for r in logged if r.get("event") == "audit"} == {r["id"] for r in records}
    out = cli("audit", "verify", "--file", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


async def _poll(fn: Any, timeout: float = 15.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await fn()
        if result is not None:
            return result
        if loop.time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.1)


async def admin_query(gw: Gateway, key_id: str, **params: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(f"{gw.base}/admin/audit", params=params, headers=gw.auth(key_id))


async def test_postgres_sink_and_admin_api_scoped_by_tenant(postgres_dsn: str, tmp_path: Path) -> None:
    async with temp_database(postgres_dsn) as dsn:
        up = start_upstream(tmp_path)
        policies = with_dead_server(
            default_policies(up.url, audit_arguments=True, shared_with=["globex"], compat_status_200=False)
        )
        policies["tenants.yaml"]["tenants"]["globex"] = {"servers": []}
        keys = {
            **KEYS,
            "userb": {"tenant": "globex", "scopes": ["read", "write"]},
            "admina": {"tenant": "acme", "scopes": ["read", "admin"]},
            "adminb": {"tenant": "globex", "scopes": ["read", "admin"]},
        }
        config = {"postgres": {"dsn": dsn}, "audit": {"sink": "postgres"}}
        gw = start_gateway(tmp_path / "gw", policies, keys=keys, config=config)
        with running(gw, up):
            await sdk_call(gw, "user")
            await sdk_call(gw, "userb")
            await drive_refusals(gw)
            await drive_breaker_and_body_cap(gw)

            async def acme_page() -> list[dict[str, Any]] | None:
                resp = await admin_query(gw, "admina", server="example", limit="1000")
                assert resp.status_code == 200, resp.text
                recs: list[dict[str, Any]] = resp.json()["records"]
                return recs if any(r["reason"] == "rate_limited" for r in recs) else None

            acme = await _poll(acme_page)
            assert acme and {r["tenant"] for r in acme} == {"acme"}
            # asking for another tenant's trail is refused outright (a tenant admin is not an operator)
            other = await admin_query(gw, "admina", tenant="globex")
            assert problem_reason(other.headers["content-type"], other.status_code, other.json()) == "tenant_mismatch"
            assert other.status_code == 403
            # whatever filters admin A sends, nothing of globex comes back
            for params in (
                {"tenant": "acme"},
                {"server": "example", "method": "tools/call"},
                {"decision": "allowed"},
                {"from": "2000-01-01T00:00:00", "to": "2100-01-01T00:00:00"},
                {"request_id": "' OR '1'='1"},
            ):
                resp = await admin_query(gw, "admina", **params)
                assert resp.status_code == 200, resp.text
                assert all(r["tenant"] == "acme" for r in resp.json()["records"]), params
            calls_b = (await admin_query(gw, "adminb", method="tools/call")).json()["records"]
            assert calls_b and {r["tenant"] for r in calls_b} == {"globex"}

            # filters and keyset pagination: pages of 2 cover the filtered set exactly once
            refused = (await admin_query(gw, "admina", decision="refused", server="example")).json()["records"]
            assert {r["stage"] for r in refused} == {"authz", "ratelimit"}
            # refusals before authentication (bad key, body over the cap) have no tenant: no tenant admin sees them
            assert not any(r["reason"] in ("unknown_key", "body_too_large") for r in refused)
            breaker = (await admin_query(gw, "admina", server="dead", stage="breaker")).json()["records"]
            assert [r["reason"] for r in breaker] == ["circuit_open"]
            seen: list[str] = []
            cursor: str | None = None
            for _ in range(100):
                params = {"server": "example", "limit": "2", **({"cursor": cursor} if cursor else {})}
                page = (await admin_query(gw, "admina", **params)).json()
                seen.extend(r["id"] for r in page["records"])
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            full = (await admin_query(gw, "admina", server="example", limit="1000")).json()["records"]
            assert seen == [r["id"] for r in full] and len(set(seen)) == len(seen)

            # not an admin: refused (and that refusal is audited too); bad query parameters: 400
            denied = await admin_query(gw, "user")
            reason = problem_reason(denied.headers["content-type"], denied.status_code, denied.json())
            assert denied.status_code == 403 and reason == "admin_scope_required"
            assert (await admin_query(gw, "admina", limit="0")).status_code == 400
            assert (await admin_query(gw, "admina", decision="maybe")).status_code == 400
            assert (await admin_query(gw, "admina", cursor="!!")).status_code == 400
        assert gw.stop() == 0

        conn = await asyncpg.connect(dsn)
        try:
            rows = [dict(r) for r in await conn.fetch("SELECT * FROM audit_records")]
        finally:
            await conn.close()
        check_refusals([{**r, "arguments": orjson.loads(r["arguments"]) if r["arguments"] else None} for r in rows])
        admin_rows = [r for r in rows if r["server"] == "_admin"]
        assert any(r["reason"] == "admin_scope_required" and r["stage"] == "authz" for r in admin_rows)
        assert any(r["rpc_method"] == "admin/audit.query" and r["risk"] == "high" for r in admin_rows)
        assert_no_secrets(gw, gw.logs(), repr(rows))
        out = cli("audit", "verify", "--dsn", dsn)
        assert out.returncode == 0, out.stdout + out.stderr


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exported")


async def test_gateway_keeps_every_record_across_a_postgres_outage(
    private_postgres: PostgresInstance, tmp_path: Path
) -> None:
    async with temp_database(private_postgres.dsn) as dsn:
        up = start_upstream(tmp_path, json_response=True)
        # the load is 450 `initialize`s of one key: sessions are capped per key and cost a rate unit by default,
        # neither of which this test is about
        config = {
            "postgres": {"dsn": dsn},
            "audit": {"sink": "postgres", "reconnect_interval": 0.2},
            "http": {"max_sessions_per_key": 1000},
        }
        policies = default_policies(up.url)
        policies["limits.yaml"] = {"costs": {"initialize": 0}}
        gw = start_gateway(tmp_path / "gw", policies, keys=KEYS, config=config)
        sent: list[str] = []
        with running(gw, up):
            async with httpx.AsyncClient(timeout=10) as client:

                async def burst(tag: str, n: int) -> None:
                    async def one(i: int) -> None:
                        rid = f"load-{tag}-{i}"
                        headers = {**ACCEPT, **gw.auth("user"), "X-Request-ID": rid}
                        resp = await client.post(gw.url(), content=orjson.dumps(INIT), headers=headers)
                        assert resp.status_code == 200  # requests are served while PostgreSQL is down
                        sent.append(rid)

                    for start in range(0, n, 10):
                        await asyncio.gather(*(one(i) for i in range(start, min(n, start + 10))))

                await burst("before", 150)
                await asyncio.to_thread(private_postgres.stop)
                await burst("during", 150)

                async def spooling() -> bool | None:
                    text = (await client.get(f"{gw.base}/metrics")).text
                    spooled = metric(text, "mcp_gateway_audit_records_spooled_total")
                    return True if spooled > 0 and metric(text, "mcp_gateway_audit_sink_up") == 0 else None

                await _poll(spooling)
                await asyncio.to_thread(private_postgres.start)
                await burst("after", 150)

                async def replayed() -> bool | None:
                    text = (await client.get(f"{gw.base}/metrics")).text
                    done = metric(text, "mcp_gateway_audit_records_replayed_total")
                    return True if done >= metric(text, "mcp_gateway_audit_records_spooled_total") > 0 else None

                await _poll(replayed, timeout=30)
                text = (await client.get(f"{gw.base}/metrics")).text
                assert metric(text, "mcp_gateway_audit_records_dropped_total") == 0
        assert gw.stop() == 0
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT request_id FROM audit_records WHERE request_id LIKE 'load-%'")
        finally:
            await conn.close()
        got = [r["request_id"] for r in rows]
        assert len(sent) == 450 and len(got) == len(sent) and set(got) == set(sent)
        out = cli("audit", "verify", "--dsn", dsn)
        assert out.returncode == 0, out.stdout + out.stderr
