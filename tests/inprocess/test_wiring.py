"""Routes whose components are given at route wiring (gateway/app.py), through the whole app: the admin routes
(AdminGate: admin-scope check, audit), OAuth metadata, and the refusals made outside the chain (the exposure
middleware's Host check, the HTTP contract's 404 and 417), each well-formed and audited."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.testing import UNREACHABLE_UPSTREAM
from tests.conftest import GatewayClientFactory

pytestmark = pytest.mark.inprocess

ADMIN_KEYS = {
    "op": {"tenant": "acme", "scopes": ["admin"], "role": "operator"},
    "ta": {"tenant": "acme", "scopes": ["admin"]},
    "user": {"tenant": "acme", "scopes": ["read", "write"]},
}


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


async def _record_of(path: Path, request_id: str) -> dict[str, Any]:
    for _ in range(200):  # the sink flushes every audit.flush_interval; bounded wait, no timing asserted
        for record in _records(path):
            if record["request_id"] == request_id:
                return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"no audit record for request {request_id} in {path}")


def _auth(raw: dict[str, str], key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw[key]}"}


async def test_admin_servers_answers_each_role_its_own_view_and_is_audited(
    gateway_client: GatewayClientFactory, tmp_path: Path
) -> None:
    client, raw = await gateway_client(keys=ADMIN_KEYS)
    operator = await client.get("/admin/servers", headers={**_auth(raw, "op"), "X-Request-ID": "adm-op"})
    assert operator.status == 200
    (instance,) = orjson.loads(await operator.read())["servers"]["example"]["instances"]
    assert instance["url"] == UNREACHABLE_UPSTREAM
    tenant_admin = await client.get("/admin/servers", headers=_auth(raw, "ta"))
    assert tenant_admin.status == 200
    (instance,) = orjson.loads(await tenant_admin.read())["servers"]["example"]["instances"]
    assert "url" not in instance and instance["instance"] == 0
    record = await _record_of(tmp_path / "gateway-1" / "audit.jsonl", "adm-op")
    assert record["rpc_method"] == "admin/servers.list" and record["http_status"] == 200


async def test_admin_routes_refuse_without_the_admin_scope_and_audit_it(
    gateway_client: GatewayClientFactory, tmp_path: Path
) -> None:
    client, raw = await gateway_client(keys=ADMIN_KEYS)
    for path, key, status in (("/admin/keys", None, 401), ("/admin/reload", "user", 403)):
        headers = {"X-Request-ID": f"refused-{status}", **(_auth(raw, key) if key else {})}
        resp = await (
            client.get(path, headers=headers) if path == "/admin/keys" else client.post(path, headers=headers)
        )
        # the admin API answers refusals as RFC 9457 problem details (gateway/admin/problem.py)
        assert resp.status == status and resp.content_type == "application/problem+json"
        problem = orjson.loads(await resp.read())
        assert problem["status"] == status and problem["reason"] and "jsonrpc" not in problem
        record = await _record_of(tmp_path / "gateway-1" / "audit.jsonl", f"refused-{status}")
        assert record["http_status"] == status and record["decision"] != "allow" and record["reason"]


async def test_admin_reload_and_key_list_use_the_policy_store(gateway_client: GatewayClientFactory) -> None:
    client, raw = await gateway_client(keys=ADMIN_KEYS)
    reload = await client.post("/admin/reload", headers=_auth(raw, "op"))
    assert reload.status == 200 and orjson.loads(await reload.read())["ok"] is True
    listed = await client.get("/admin/keys", headers=_auth(raw, "op"))
    assert listed.status == 200
    ids = {k["id"] for k in orjson.loads(await listed.read())["keys"]}
    assert ids == set(ADMIN_KEYS)


async def test_oauth_metadata_is_404_on_an_api_key_route(gateway_client: GatewayClientFactory) -> None:
    client, _ = await gateway_client()
    resp = await client.get("/.well-known/oauth-protected-resource/mcp/example")
    assert resp.status == 404


async def test_refusals_outside_the_chain_are_well_formed_and_audited(
    gateway_client: GatewayClientFactory, tmp_path: Path
) -> None:
    client, _ = await gateway_client()
    unknown = await client.get("/nowhere", headers={"X-Request-ID": "r-404"})
    expect = await client.post("/mcp/example", data=b"{}", headers={"Expect": "magic", "X-Request-ID": "r-417"})
    host = await client.get("/healthz", headers={"Host": "evil.example", "X-Request-ID": "r-host"})
    for resp, rid in ((unknown, "r-404"), (expect, "r-417"), (host, "r-host")):
        assert resp.status >= 400 and resp.content_type == "application/json", (rid, resp.status)
        body = orjson.loads(await resp.read())
        assert body["jsonrpc"] == "2.0" and body["error"]["code"] < 0
        record = await _record_of(tmp_path / "gateway-1" / "audit.jsonl", rid)
        assert record["http_status"] == resp.status
    assert (unknown.status, expect.status, host.status) == (404, 417, 421)
