"""The PostgreSQL key store through a real gateway process and a real PostgreSQL: keys created with the CLI and
the admin API work at once, revocations apply (immediately on the revoking process, within the cache TTL from
elsewhere), usage counters reach `mgw_api_key_usage` in batches, and a store outage is a 503, never a 401.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

from gateway.db.migrate import migrate
from gateway.db.scratch import scratch_database
from tests.conftest import problem_reason
from tests.e2e.test_identity_helpers import POLICY_REFUSAL, assert_refused, open_session, post, rpc, start_recorder
from tests.harness import PYTHON, ROOT, Gateway, PostgresInstance, Upstream, running, start_gateway

pytestmark = pytest.mark.e2e

UNAUTHENTICATED = -31001
FORBIDDEN = -31403


def _policies(upstream: Upstream) -> dict[str, Any]:
    return {
        "servers.yaml": {"servers": {"example": {"upstreams": [{"url": upstream.url}], "owner": "acme"}}},
        "tenants.yaml": {"tenants": {"acme": {"servers": ["example"]}, "globex": {}}},
        "keys.yaml": {"keys": []},
        "limits.yaml": {"ddos": {"enabled": False}, "tiers": {}},
        "access.yaml": {"rules": []},
    }


def _config(dsn: str) -> dict[str, Any]:
    return {
        "postgres": {"dsn": dsn},
        "api_keys": {"cache_seconds": 0.5, "negative_cache_seconds": 0.2, "usage_flush_seconds": 0.3},
    }


def cli(gw: Gateway, *args: str) -> str:
    out = subprocess.run(
        [PYTHON, "-m", "gateway", "keys", *args, "--config", str(gw.config_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout


def created_key(stdout: str) -> str:
    m = re.search(r"^key: (mgw_\S+)$", stdout, re.MULTILINE)
    assert m, stdout
    return m.group(1)


@pytest.fixture
async def own_db(postgres_dsn: str) -> AsyncIterator[str]:
    async with scratch_database(postgres_dsn, prefix="mgw_identity_") as dsn:
        yield dsn


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    up, _ = start_recorder(tmp_path, json_response=True)
    try:
        yield up
    finally:
        up.stop()


async def _poll(fn: Any, deadline_s: float = 15.0) -> Any:
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        last = await fn()
        if last:
            return last
        await asyncio.sleep(0.2)
    return last


async def test_postgres_keys_cli_admin_revocation_usage(tmp_path: Path, own_db: str, upstream: Upstream) -> None:
    gw = start_gateway(
        tmp_path / "gw",
        _policies(upstream),
        keys={
            "adm": {"tenant": "acme", "scopes": ["read", "write", "admin"]},
            "plain": {"tenant": "acme", "scopes": ["read", "write"]},
            "net10": {"tenant": "acme", "scopes": ["read"], "allow_ips": ["10.0.0.0/8"]},
        },
        config=_config(own_db),
    )
    with running(gw):
        # the CLI writes to PostgreSQL; the running gateway finds the key without a reload
        cli_key = created_key(cli(gw, "create", "--tenant", "acme", "--scopes", "read,write", "--dsn", own_db))
        cli_id = cli_key.split("_")[1]
        async with (
            streamablehttp_client(gw.url(), headers={"X-API-Key": cli_key}) as (r, w, _),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            res = await s.call_tool("add", {"a": 2, "b": 40})
            assert res.content[0].text == "42"  # type: ignore[union-attr]

        async with aiohttp.ClientSession() as http:
            adm = gw.auth("adm")
            # admin API: create (the key is in the answer once), list, cross-tenant refusal, revoke
            async with http.post(
                f"{gw.base}/admin/keys", json={"scopes": ["read"], "description": "ro"}, headers=adm
            ) as r:
                assert r.status == 201, await r.text()
                made = await r.json()
            ro_key, ro_id = made["key"], made["id"]
            assert made["tenant"] == "acme" and made["scopes"] == ["read"] and "hash" not in made
            sid = await open_session(http, gw.url(), {"Authorization": f"Bearer {ro_key}"})
            call = rpc("tools/call", {"name": "add", "arguments": {"a": 1, "b": 1}}, 3)
            ans = await post(http, gw.url(), call, {"Authorization": f"Bearer {ro_key}"}, sid)
            assert_refused(ans, POLICY_REFUSAL, FORBIDDEN, "scope_denied")

            async with http.post(f"{gw.base}/admin/keys", json={"tenant": "globex"}, headers=adm) as r:
                assert r.status == 403
                assert problem_reason(r.headers["Content-Type"], 403, await r.json()) == "tenant_mismatch"
            async with http.get(f"{gw.base}/admin/keys", headers=gw.auth("plain")) as r:
                assert r.status == 403
                assert problem_reason(r.headers["Content-Type"], 403, await r.json()) == "admin_scope_required"

            async with http.delete(f"{gw.base}/admin/keys/{ro_id}", headers=adm) as r:
                assert r.status == 200, await r.text()
            ans = await post(http, gw.url(), rpc("tools/list", rpc_id=4), {"Authorization": f"Bearer {ro_key}"}, sid)
            assert_refused(ans, 401, UNAUTHENTICATED, "key_revoked")  # at once on the revoking process

            # revoked elsewhere (the CLI): this gateway notices within its cache TTL
            cli(gw, "revoke", cli_id, "--dsn", own_db)

            async def revoked() -> bool:
                a = await post(http, gw.url(), rpc("ping", rpc_id=5), {"X-API-Key": cli_key})
                return a.status == 401 and a.error["data"]["reason"] == "key_revoked"

            assert await _poll(revoked), "CLI revocation not applied"

            # no trusted proxies configured here: a forged X-Forwarded-For does not move the client into the key's net
            forged = {**gw.auth("net10"), "X-Forwarded-For": "10.1.2.3"}
            assert_refused(
                await post(http, gw.url(), rpc("ping", rpc_id=7), forged), 403, FORBIDDEN, "key_ip_not_allowed"
            )

            unknown = await post(http, gw.url(), rpc("ping", rpc_id=6), {"X-API-Key": f"mgw_nosuch_{'a' * 30}"})
            assert_refused(unknown, 401, UNAUTHENTICATED, "unknown_key")

            async with http.get(f"{gw.base}/admin/keys", headers=adm) as r:
                listed = {k["id"]: k for k in (await r.json())["keys"]}
            assert listed[ro_id]["revoked"] and listed[cli_id]["revoked"] and not listed["plain"]["revoked"]
            assert all("hash" not in k for k in listed.values())

        # usage counters arrive in PostgreSQL in batches (initialize, initialized, call at least)
        conn = await asyncpg.connect(own_db)
        try:

            async def counted() -> int:
                n = await conn.fetchval("SELECT request_count FROM mgw_api_key_usage WHERE key_id = $1", cli_id)
                return int(n) if n is not None and n >= 3 else 0

            assert await _poll(counted) >= 3
        finally:
            await conn.close()


async def test_key_store_outage_is_503_and_recovers(
    tmp_path: Path, private_postgres: PostgresInstance, upstream: Upstream
) -> None:
    dsn = private_postgres.dsn
    await migrate(dsn)
    gw = start_gateway(tmp_path / "gw", _policies(upstream), config=_config(dsn))
    with running(gw):
        key = created_key(cli(gw, "create", "--tenant", "acme", "--dsn", dsn))
        headers = {"X-API-Key": key}
        async with aiohttp.ClientSession() as http:
            sid = await open_session(http, gw.url(), headers)
            private_postgres.stop()
            await asyncio.sleep(0.8)  # past the cache TTL: the next request has to ask the store

            async def refused() -> Any:
                a = await post(http, gw.url(), rpc("ping", rpc_id=1), headers, sid)
                return a if a.status == 503 else None

            ans = await _poll(refused)
            assert ans is not None, "no 503 while the key store is down"
            assert_refused(ans, 503, -31503, "key_store_unavailable")
            assert "Retry-After" in ans.headers
            private_postgres.start()

            async def back() -> bool:
                a = await post(http, gw.url(), rpc("ping", rpc_id=2), headers, sid)
                return a.status == 200

            assert await _poll(back, 30), "did not recover after PostgreSQL came back"
