"""Adversarial tests of the admin model (issue 14, finding 1 and the `_admin` name of finding 8), each through a
real gateway process: a tenant admin must never become an operator, mint a key stronger than its own, reach
another tenant's keys or audit trail, reload the policy, or read upstream URLs; every admin action is audited in
the trail of the tenant it concerns; and no server may take a name the gateway uses itself.

Tenants: `demo` and `beta` (tenant admins `demoadm`, `betaadm`), operator key `demoop` filed under `demo`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
import yaml

from gateway.admin.problem import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_PREFIX
from gateway.db.scratch import scratch_database
from tests.harness import PYTHON, ROOT, Gateway, Upstream, running, start_gateway, start_upstream
from tests.inprocess.test_admin_openapi import RFC3339_UTC, conforms

pytestmark = pytest.mark.e2e

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "sec", "version": "1"}},
}
CREATOR_EXPIRY = datetime.now(UTC) + timedelta(days=2)

KEYS: dict[str, dict[str, Any]] = {
    # the "key with the admin scope of tenant demo"
    "demoadm": {"tenant": "demo", "scopes": ["read", "write", "admin"]},
    # a tenant admin held in on every other dimension: scopes, networks, expiry, its own tool rules
    "demonarrow": {
        "tenant": "demo",
        "scopes": ["read", "admin"],
        "allow_ips": ["127.0.0.0/8"],
        "expires_at": CREATOR_EXPIRY.isoformat(),
        "tools": {"deny": ["danger_*"]},
    },
    "demouser": {"tenant": "demo", "scopes": ["read", "write"]},
    # an operator's key filed under demo still belongs to the operator
    "demoop": {"tenant": "demo", "scopes": ["read", "write", "admin"], "role": "operator"},
    "betaadm": {"tenant": "beta", "scopes": ["read", "write", "admin"]},
    "betauser": {"tenant": "beta", "scopes": ["read", "write"]},
}


def policies(upstream_url: str) -> dict[str, Any]:
    off = {"health": {"enabled": False}}
    return {
        "servers.yaml": {
            "servers": {
                "example": {"upstreams": [{"url": upstream_url}], "owner": "demo", **off},
                "betasrv": {"upstreams": [{"url": upstream_url}], "owner": "beta", **off},
                "opsonly": {"upstreams": [{"url": upstream_url}], "owner": "ops", **off},
                "common": {"upstreams": [{"url": upstream_url}], "owner": "ops", "shared_with": ["*"], **off},
            }
        },
        "tenants.yaml": {"tenants": {"demo": {}, "beta": {}, "ops": {}}},
        "keys.yaml": {"keys": []},
        "limits.yaml": {"ddos": {"enabled": False}},
        "access.yaml": {"rules": []},
    }


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    up = start_upstream(tmp_path, json_response=True)
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture
async def own_db(postgres_dsn: str) -> AsyncIterator[str]:
    async with scratch_database(postgres_dsn, prefix="mgw_secadmin_") as dsn:
        yield dsn


class Admin:
    """Raw admin API calls (exact status and body), each with its own X-Request-ID to find its audit record."""

    def __init__(self, gw: Gateway, http: httpx.AsyncClient) -> None:
        self.gw = gw
        self.http = http
        self.request_ids: list[str] = []

    async def call(
        self,
        method: str,
        path: str,
        key: str | None,
        body: Any = None,
        *,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        rid = uuid.uuid4().hex
        self.request_ids.append(rid)
        headers = {"X-Request-ID": rid}
        if key is not None:
            # a key id of keys.yaml, or a full key the admin API created
            headers["Authorization"] = f"Bearer {key if key.startswith('mgw_') else self.gw.keys[key]}"
        if body is not None:
            content = json.dumps(body).encode()
        if content is not None:
            headers["Content-Type"] = "application/json"
        return await self.http.request(method, f"{self.gw.base}{path}", headers=headers, content=content, params=params)

    async def create(self, key: str, body: Any) -> httpx.Response:
        return await self.call("POST", "/admin/keys", key, body)


def refusal(resp: httpx.Response, status: int, reason: str) -> dict[str, Any]:
    """A refusal as the admin API answers one: status, RFC 9457 problem details, no-store."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM_CONTENT_TYPE, resp.headers
    assert resp.headers.get("cache-control") == "no-store"
    err: dict[str, Any] = resp.json()
    assert "jsonrpc" not in err and "error" not in err, err
    assert isinstance(err["title"], str) and isinstance(err["detail"], str) and err["status"] == status
    assert err["type"] == PROBLEM_TYPE_PREFIX + reason and err["reason"] == reason, err
    return err


def sans_detail(problem: dict[str, Any]) -> dict[str, Any]:
    """A problem without its human text (which may name the id asked for): what must not tell two cases apart."""
    return {k: v for k, v in problem.items() if k != "detail"}


async def mcp_status(gw: Gateway, server: str, key: str) -> int:
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(gw.url(server), json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {key}"})
        return r.status_code


async def poll(fn: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await fn()
        if last:
            return last
        await asyncio.sleep(0.2)
    return last


async def file_records(gw: Gateway, request_ids: list[str], count: int) -> list[dict[str, Any]]:
    """The file sink's records of these requests, once there are `count` of them (batched writes: poll)."""
    wanted = set(request_ids)
    path = gw.workdir / "audit.jsonl"

    async def read() -> list[dict[str, Any]] | None:
        text = path.read_text() if path.exists() else ""
        recs = [r for r in map(json.loads, text.splitlines()) if r.get("request_id") in wanted]
        return recs if len(recs) >= count else None

    recs = await poll(read)
    assert recs is not None, f"fewer than {count} audit records for {len(wanted)} admin calls"
    return list(recs)


async def count_keys(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM mgw_api_keys"))
    finally:
        await conn.close()


# ---------------------------------------------------------------------------------------------------- embedded


async def test_tenant_admin_cannot_mint_operator_or_foreign_key_embedded(tmp_path: Path, upstream: Upstream) -> None:
    """Without PostgreSQL no key can be created at all, but the refusal of the escalation comes first (403, not
    the store's 503), another tenant's keys are unreachable, and both tenants' trails hold the attempt."""
    gw = start_gateway(tmp_path / "gw", policies(upstream.url), keys=KEYS)
    with running(gw):
        async with httpx.AsyncClient(timeout=10) as http:
            a = Admin(gw, http)
            # the exact request
            err = refusal(await a.create("demoadm", {"role": "operator", "tenant": "beta"}), 403, "tenant_mismatch")
            assert (err["title"], err["stage"]) == ("Forbidden", "authz")  # the Forbidden class, from authz
            err = refusal(await a.create("demoadm", {"role": "operator"}), 403, "exceeds_creator")
            assert err["fields"] == ["role"]
            # a well-formed request of its own power reaches the store, which is not there
            refusal(await a.create("demoadm", {"scopes": ["read"]}), 503, "key_store_unconfigured")

            refusal(await a.call("GET", "/admin/keys", "demoadm", params={"tenant": "beta"}), 403, "tenant_mismatch")
            listed = await a.call("GET", "/admin/keys", "demoadm")
            assert listed.status_code == 200, listed.text
            ids = {k["id"] for k in listed.json()["keys"]}
            # its own tenant's keys, not beta's, and not the operator's key filed under demo
            assert ids == {"demoadm", "demonarrow", "demouser"}
            everyone = await a.call("GET", "/admin/keys", "demoop")
            assert {k["id"] for k in everyone.json()["keys"]} == set(KEYS)

            # beta's key and the operator's are answered exactly like an id nobody has
            nobody = await a.call("DELETE", "/admin/keys/nosuchkey", "demoadm")
            for victim in ("betaadm", "demoop"):
                for method, path in (("DELETE", f"/admin/keys/{victim}"), ("POST", f"/admin/keys/{victim}/revoke")):
                    r = await a.call(method, path, "demoadm")
                    assert (r.status_code, r.headers["content-type"], sans_detail(r.json())) == (
                        nobody.status_code,
                        nobody.headers["content-type"],
                        sans_detail(nobody.json()),
                    ), r.text
            refusal(await a.call("DELETE", "/admin/keys/demouser", "demoadm"), 400, "policy_key")
            assert await mcp_status(gw, "betasrv", gw.keys["betaadm"]) == 200

        # one record per call, plus beta's copy of the four calls aimed at beta's keys
        recs = await file_records(gw, a.request_ids, len(a.request_ids) + 4)
    assert len(recs) == len(a.request_ids) + 4
    by_tenant: dict[str | None, list[dict[str, Any]]] = {}
    for rec in recs:
        by_tenant.setdefault(rec["tenant"], []).append(rec)
    # the attempt on beta's keys is in beta's trail, naming the actor; and in demo's
    beta = [r for r in by_tenant["beta"] if r["key_id"] == "demoadm"]
    assert {(r["rpc_method"], r["reason"]) for r in beta} >= {
        ("admin/keys.create", "tenant_mismatch"),
        ("admin/keys.list", "tenant_mismatch"),
        ("admin/keys.revoke", "key_store_unconfigured"),
    }
    assert all(r["notes"]["actor_tenant"] == "demo" and r["notes"]["target_tenant"] == "beta" for r in beta)
    assert all(r["decision"] == "refused" and r["server"] == "_admin" for r in beta)
    demo_side = {r["request_id"] for r in by_tenant["demo"] if r["reason"] == "tenant_mismatch"}
    assert {r["request_id"] for r in beta if r["reason"] == "tenant_mismatch"} <= demo_side
    # every call is recorded, refusals included
    assert {r["request_id"] for r in recs} == set(a.request_ids)


async def test_tenant_admin_cannot_reload_or_read_other_tenants_servers(tmp_path: Path, upstream: Upstream) -> None:
    gw = start_gateway(tmp_path / "gw", policies(upstream.url), keys=KEYS, config={"policy_poll_seconds": 0})
    with running(gw):
        async with httpx.AsyncClient(timeout=10) as http:
            a = Admin(gw, http)
            refusal(await a.call("POST", "/admin/reload", "demoadm"), 403, "operator_required")
            ok = await a.call("POST", "/admin/reload", "demoop")
            assert ok.status_code == 200 and ok.json()["ok"] is True, ok.text

            mine = await a.call("GET", "/admin/servers", "demoadm")
            assert mine.status_code == 200, mine.text
            view = mine.json()
            # the servers demo may reach (its own and the one shared with everyone), nothing else
            assert set(view["servers"]) == {"example", "common"} and view["tenant"] == "demo"
            for server in view["servers"].values():
                for i, inst in enumerate(server["instances"]):
                    assert "url" not in inst and inst["instance"] == i
            # no upstream address anywhere in the answer
            assert f":{upstream.port}" not in mine.text and "127.0.0.1" not in mine.text
            beta = (await a.call("GET", "/admin/servers", "betaadm")).json()
            assert set(beta["servers"]) == {"betasrv", "common"}

            full = await a.call("GET", "/admin/servers", "demoop")
            assert set(full.json()["servers"]) == {"example", "betasrv", "opsonly", "common"}
            assert full.json()["servers"]["betasrv"]["instances"][0]["url"] == upstream.url

        recs = await file_records(gw, a.request_ids, len(a.request_ids))
    refused = [r for r in recs if r["rpc_method"] == "admin/reload" and r["decision"] == "refused"]
    assert [(r["key_id"], r["reason"], r["http_status"]) for r in refused] == [("demoadm", "operator_required", 403)]
    assert {r["notes"]["admin_role"] for r in recs} == {"tenant_admin", "operator"}


async def test_key_request_fields_are_validated_and_bounded(tmp_path: Path, upstream: Upstream) -> None:
    gw = start_gateway(tmp_path / "gw", policies(upstream.url), keys=KEYS)
    cases: list[tuple[Any, str]] = [
        ({"role": "superuser"}, "unknown_role"),
        ({"role": "anonymous"}, "unknown_role"),
        ({"role": "r" * 65}, "invalid_key_request"),
        ({"role": "us er"}, "invalid_key_request"),
        ({"scopes": []}, "invalid_key_request"),
        ({"scopes": ["root"]}, "invalid_key_request"),
        ({"scopes": ["read", "read"]}, "invalid_key_request"),
        ({"scopes": "read"}, "invalid_key_request"),
        ({"tenant": "t" * 129}, "invalid_key_request"),
        ({"id": "has_underscore"}, "invalid_key_request"),
        ({"id": "k" * 65}, "invalid_key_request"),
        ({"description": "d" * 1025}, "invalid_key_request"),
        ({"description": "line\nbreak"}, "invalid_key_request"),
        ({"description": "nul\x00"}, "invalid_key_request"),
        ({"tools_allow": ["t"] * 257}, "invalid_key_request"),
        ({"tools_deny": ["x" * 257]}, "invalid_key_request"),
        ({"tools_deny": [""]}, "invalid_key_request"),
        ({"allow_ips": ["10.0.0.0/33"]}, "invalid_key_request"),
        ({"allow_ips": ["10.0.0.0/8"] * 65}, "invalid_key_request"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "invalid_key_request"),
        ({"expires_at": "tomorrow"}, "invalid_key_request"),
        ({"unknown_field": 1}, "invalid_key_request"),
        (["not", "an", "object"], "invalid_key_request"),
    ]
    with running(gw):
        async with httpx.AsyncClient(timeout=10) as http:
            a = Admin(gw, http)
            for body, reason in cases:
                sent = {"tenant": "demo"} | body if isinstance(body, dict) else body
                refusal(await a.create("demoop", sent), 400, reason)
            refusal(await a.call("POST", "/admin/keys", "demoop", content=b"{not json"), 400, "invalid_key_request")
            refusal(
                await a.call("POST", "/admin/keys", "demoop", content=b" " * (64 * 1024 + 1)), 413, "body_too_large"
            )
            refusal(await a.call("GET", "/admin/keys", "demoop", params={"tenant": "t" * 200}), 400, "bad_query")
            refusal(await a.call("DELETE", "/admin/keys/" + "k" * 300, "demoop"), 404, "unknown_key")
        recs = await file_records(gw, a.request_ids, len(a.request_ids))
    assert all(r["decision"] == "refused" and r["http_status"] in (400, 404, 413) for r in recs)


# ---------------------------------------------------------------------------------------------------- PostgreSQL


async def test_tenant_admin_cannot_become_operator_postgres(tmp_path: Path, upstream: Upstream, own_db: str) -> None:
    """The issue's reproduction with the PostgreSQL key store and audit sink: refused, nothing created, and beta's
    admin sees every action on beta's keys through /admin/audit."""
    config = {"postgres": {"dsn": own_db}, "audit": {"sink": "postgres"}, "api_keys": {"cache_seconds": 0.5}}
    gw = start_gateway(tmp_path / "gw", policies(upstream.url), keys=KEYS, config=config)
    with running(gw):
        async with httpx.AsyncClient(timeout=10) as http:
            a = Admin(gw, http)
            refusal(await a.create("demoadm", {"role": "operator", "tenant": "beta"}), 403, "tenant_mismatch")
            refusal(await a.create("demoadm", {"role": "operator"}), 403, "exceeds_creator")
            refusal(
                await a.create("demoadm", {"tenant": "beta", "scopes": ["read", "write", "admin"]}),
                403,
                "tenant_mismatch",
            )
            assert await count_keys(own_db) == 0  # nothing was created

            # beta's admin makes a key; demo's admin can neither list nor revoke it
            made = await a.create("betaadm", {"scopes": ["read", "write"], "description": "beta worker"})
            assert made.status_code == 201, made.text
            beta_key, beta_id = made.json()["key"], made.json()["id"]
            conforms(made.json(), "KeyCreated")  # the OpenAPI document's schema (gateway/admin/openapi.py)
            assert RFC3339_UTC.match(made.json()["created_at"]), made.json()
            assert made.json()["role"] == "user" and made.json()["tenant"] == "beta"
            refusal(await a.call("GET", "/admin/keys", "demoadm", params={"tenant": "beta"}), 403, "tenant_mismatch")
            listed = await a.call("GET", "/admin/keys", "demoadm")
            assert beta_id not in {k["id"] for k in listed.json()["keys"]}
            nobody = refusal(await a.call("DELETE", "/admin/keys/nosuchkey", "demoadm"), 404, "unknown_key")
            for method, path in (("DELETE", f"/admin/keys/{beta_id}"), ("POST", f"/admin/keys/{beta_id}/revoke")):
                err = refusal(await a.call(method, path, "demoadm"), 404, "unknown_key")
                assert sans_detail(err) == sans_detail(nobody)
            assert await mcp_status(gw, "betasrv", beta_key) == 200  # still valid

            # a tenant admin's own keys: created with its role, listed, revocable
            own = await a.create("demoadm", {"scopes": ["read"]})
            assert own.status_code == 201 and own.json()["role"] == "user" and own.json()["tenant"] == "demo"
            # demo's key does not reach beta (answered like a missing server)
            assert await mcp_status(gw, "betasrv", own.json()["key"]) == 404
            r = await a.call("DELETE", f"/admin/keys/{own.json()['id']}", "demoadm")
            assert r.status_code == 200, r.text
            conforms(r.json(), "KeyRevoked")

            # the operator reaches every tenant: lists beta's key, revokes it, mints an operator key
            ops_list = await a.call("GET", "/admin/keys", "demoop", params={"tenant": "beta"})
            assert beta_id in {k["id"] for k in ops_list.json()["keys"]}
            conforms(ops_list.json(), "KeyList")
            assert (await a.call("DELETE", f"/admin/keys/{beta_id}", "demoop")).status_code == 200
            assert await mcp_status(gw, "betasrv", beta_key) == 401
            op2 = await a.create("demoop", {"tenant": "beta", "role": "operator", "scopes": ["admin"]})
            assert op2.status_code == 201, op2.text
            # ... which beta's own admin can neither see nor revoke
            assert op2.json()["id"] not in {
                k["id"] for k in (await a.call("GET", "/admin/keys", "betaadm")).json()["keys"]
            }
            refusal(await a.call("DELETE", f"/admin/keys/{op2.json()['id']}", "betaadm"), 404, "unknown_key")

            # beta's admin sees, in its own trail, every action on beta's keys: demo's refused attempts included
            async def beta_trail() -> list[dict[str, Any]] | None:
                r = await a.call("GET", "/admin/audit", "betaadm", params={"server": "_admin", "limit": "1000"})
                assert r.status_code == 200, r.text
                recs: list[dict[str, Any]] = r.json()["records"]
                seen = {(x["key_id"], x["rpc_method"], x["reason"]) for x in recs}
                want = {
                    ("demoadm", "admin/keys.create", "tenant_mismatch"),
                    ("demoadm", "admin/keys.list", "tenant_mismatch"),
                    ("demoadm", "admin/keys.revoke", "unknown_key"),
                    ("demoop", "admin/keys.revoke", None),
                    ("demoop", "admin/keys.create", None),
                }
                return recs if want <= seen else None

            trail = await poll(beta_trail)
            assert trail, "beta's trail does not show the actions on beta's keys"
            assert {x["tenant"] for x in trail} == {"beta"}
            foreign = [x for x in trail if x["key_id"] in ("demoadm", "demoop")]
            assert all(x["notes"]["actor_tenant"] == "demo" and x["notes"]["target_tenant"] == "beta" for x in foreign)
            # demo's own trail cannot be used as an oracle: its refused attempts on beta's key id and on an id nobody
            # has, and on tenant beta and on a tenant that does not exist, are recorded alike (red team)
            refusal(
                await a.call("GET", "/admin/keys", "demoadm", params={"tenant": "nosuchtenant"}), 403, "tenant_mismatch"
            )

            async def demo_refusals() -> list[dict[str, Any]] | None:
                r = await a.call("GET", "/admin/audit", "demoadm", params={"server": "_admin", "limit": "1000"})
                recs = [x for x in r.json()["records"] if x["reason"] in ("unknown_key", "tenant_mismatch")]
                return recs if len(recs) >= 7 else None

            mine = await poll(demo_refusals)
            assert mine, "demo's refused attempts are not in its trail"
            assert {x["tenant"] for x in mine} == {"demo"}
            assert all(set(x["notes"] or {}) == {"admin_role"} for x in mine), [x["notes"] for x in mine]
            # demo's admin has its own attempts in its own trail, and cannot read beta's
            demo_trail = await a.call("GET", "/admin/audit", "demoadm", params={"method": "admin/keys.create"})
            assert any(x["reason"] == "tenant_mismatch" for x in demo_trail.json()["records"])
            assert {x["tenant"] for x in demo_trail.json()["records"]} == {"demo"}
            refusal(await a.call("GET", "/admin/audit", "demoadm", params={"tenant": "beta"}), 403, "tenant_mismatch")
            # an operator reads any tenant's trail
            ops_view = await a.call("GET", "/admin/audit", "demoop", params={"tenant": "beta", "server": "_admin"})
            assert ops_view.status_code == 200 and {x["tenant"] for x in ops_view.json()["records"]} == {"beta"}


async def test_key_can_never_create_a_stronger_key(tmp_path: Path, upstream: Upstream, own_db: str) -> None:
    """Escalation by every field a key has: scopes, networks, expiry, tool rules, role (PostgreSQL store)."""
    gw = start_gateway(tmp_path / "gw", policies(upstream.url), keys=KEYS, config={"postgres": {"dsn": own_db}})
    inside = (CREATOR_EXPIRY - timedelta(hours=1)).isoformat()
    beyond = (CREATOR_EXPIRY + timedelta(days=30)).isoformat()
    fitting = {"scopes": ["read"], "allow_ips": ["127.0.0.1/32"], "expires_at": inside, "tools_deny": ["danger_*"]}
    with running(gw):
        async with httpx.AsyncClient(timeout=10) as http:
            a = Admin(gw, http)
            for change, field in (
                ({"scopes": ["read", "write"]}, "scopes"),
                ({"scopes": ["read", "admin", "write"]}, "scopes"),
                ({"allow_ips": []}, "allow_ips"),
                ({"allow_ips": ["0.0.0.0/0"]}, "allow_ips"),
                ({"allow_ips": ["127.0.0.1/32", "10.0.0.0/8"]}, "allow_ips"),
                ({"allow_ips": ["::1/128"]}, "allow_ips"),
                ({"expires_at": None}, "expires_at"),
                ({"expires_at": beyond}, "expires_at"),
                ({"tools_deny": []}, "tools_deny"),
                ({"tools_deny": ["danger_x"]}, "tools_deny"),
                ({"role": "admin"}, "role"),
                ({"role": "operator"}, "role"),
            ):
                err = refusal(await a.create("demonarrow", fitting | change), 403, "exceeds_creator")
                assert err["fields"] == [field], (change, err)
            # all at once: every field named
            err = refusal(
                await a.create("demonarrow", {"scopes": ["write"], "role": "operator", "tools_deny": []}),
                403,
                "exceeds_creator",
            )
            assert err["fields"] == ["role", "scopes", "allow_ips", "expires_at", "tools_deny"]
            assert await count_keys(own_db) == 0

            # within its own power it may create, and the new key works where the creator's would
            ok = await a.create("demonarrow", fitting | {"tools_deny": ["danger_*", "delete_*"]})
            assert ok.status_code == 201, ok.text
            assert await mcp_status(gw, "example", ok.json()["key"]) == 200
            # an admin key may mint an equal admin key, never a stronger one
            same = await a.create("demonarrow", fitting | {"scopes": ["read", "admin"]})
            assert same.status_code == 201, same.text
            err = refusal(await a.create(same.json()["key"], fitting | {"scopes": ["write"]}), 403, "exceeds_creator")
            assert err["fields"] == ["scopes"]


# ---------------------------------------------------------------------------------------------------- names


def check(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "gateway", "check", str(directory)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write(directory: Path, pol: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in pol.items():
        (directory / name).write_text(yaml.safe_dump(content, sort_keys=False))


def with_server(upstream_url: str, name: str) -> dict[str, Any]:
    pol = policies(upstream_url)
    # a route that takes JWTs and anonymous callers: under the admin API's own name it would have opened it
    pol["servers.yaml"]["servers"][name] = {
        "upstreams": [{"url": upstream_url}],
        "owner": "demo",
        "auth": {
            "methods": ["api_key", "jwt"],
            "anonymous": True,
            "anonymous_scopes": ["admin"],
            "jwt": {"issuer": "https://idp.example", "algorithms": ["HS256"], "hs_secret": {"env": "ADMIN_JWT"}},
        },
    }
    return pol


@pytest.mark.parametrize("name", ["_admin", "_internal", "..", ".", ".well-known"])
def test_reserved_server_name_is_refused_by_check(tmp_path: Path, name: str) -> None:
    write(tmp_path / "p", with_server("http://127.0.0.1:9/mcp", name))
    r = check(tmp_path / "p")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"server name {name!r} is reserved" in r.stderr and "servers.yaml" in r.stderr


async def test_server_named_admin_cannot_take_over_the_admin_api(tmp_path: Path, upstream: Upstream) -> None:
    secret = "s" * 40
    gw = start_gateway(
        tmp_path / "gw",
        policies(upstream.url),
        keys=KEYS,
        config={"policy_poll_seconds": 0},
        env={"ADMIN_JWT": secret},
    )
    token = jwt.encode(
        {
            "iss": "https://idp.example",
            "sub": "mallory",
            "tenant": "demo",
            "role": "operator",
            "scope": "admin",
            "aud": f"{gw.base}/mcp/_admin",
            "exp": int(time.time()) + 600,
        },
        secret,
        algorithm="HS256",
    )
    with running(gw):
        async with httpx.AsyncClient(timeout=10) as http:
            a = Admin(gw, http)
            gw.write_policies(with_server(upstream.url, "_admin"))
            r = await a.call("POST", "/admin/reload", "demoop")
            assert r.status_code == 422 and r.json()["ok"] is False, r.text
            assert any("'_admin' is reserved" in e for e in r.json()["errors"]), r.json()["errors"]
            # the admin API still takes API keys only, and nobody anonymous
            forged = await http.get(f"{gw.base}/admin/keys", headers={"Authorization": f"Bearer {token}"})
            refusal(forged, 401, "credential_not_accepted")
            refusal(await http.get(f"{gw.base}/admin/keys"), 401, "missing_credentials")
            refusal(await http.post(f"{gw.base}/admin/reload"), 401, "missing_credentials")
