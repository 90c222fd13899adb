"""The admin API as a REST API: the OpenAPI 3.1 document it serves matches the routes the app registers (every
`/admin/*` route documented, nothing documented that is not registered), real answers validate against its
schemas, errors are RFC 9457 problem details everywhere under `/admin/`, times are RFC 3339 UTC, and lists page
with `limit` and `cursor`. In the test's event loop (tests/conftest.py `gateway_client`); no PostgreSQL here, so
the PostgreSQL-backed answers are the 503 problems (tests/security/test_admin.py covers them with PostgreSQL)."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator

from gateway.admin.openapi import DOCUMENT, PATHS
from gateway.admin.problem import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_PREFIX
from gateway.testing import UNREACHABLE_UPSTREAM, policy_documents
from tests.conftest import GatewayClientFactory

pytestmark = pytest.mark.inprocess

SERVERS = {
    name: {"upstreams": [{"url": UNREACHABLE_UPSTREAM}], "owner": "acme" if name != "zeta" else "beta"}
    for name in ("alpha", "bravo", "charlie", "zeta")
}
KEYS = {
    "ops": {"tenant": "acme", "scopes": ["admin"], "role": "operator"},
    "tadm": {"tenant": "acme", "scopes": ["admin", "read"]},
    "user1": {"tenant": "acme", "scopes": ["read"], "expires_at": "2999-01-02T03:04:05+02:00"},
    "user2": {"tenant": "beta", "scopes": ["read"]},
}
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def validator(schema: str) -> Draft202012Validator:
    root = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": DOCUMENT["components"],
        "$ref": f"#/components/schemas/{schema}",
    }
    return Draft202012Validator(root)


def conforms(body: Any, schema: str) -> None:
    errors = sorted(validator(schema).iter_errors(body), key=str)
    assert not errors, f"{schema}: {[e.message for e in errors]}\n{body}"


async def client_for(gateway_client: GatewayClientFactory) -> tuple[TestClient[Any, Any], dict[str, str]]:
    docs = policy_documents(SERVERS, tenants={"acme": {}, "beta": {}})
    return await gateway_client(docs, keys=KEYS)


def auth(keys: dict[str, str], key_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys[key_id]}"}


async def problem(resp: ClientResponse, status: int, reason: str) -> dict[str, Any]:
    """A well-formed problem details answer with this status and reason."""
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"] == PROBLEM_CONTENT_TYPE
    assert resp.headers["Cache-Control"] == "no-store" and resp.headers["X-Request-ID"]
    body: dict[str, Any] = orjson.loads(await resp.read())
    conforms(body, "Problem")
    assert body["status"] == status and body["reason"] == reason, body
    assert body["type"] == PROBLEM_TYPE_PREFIX + reason and body["title"] and body["detail"]
    assert "jsonrpc" not in body and "error" not in body
    return body


async def ok(resp: ClientResponse, schema: str, status: int = 200) -> Any:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = orjson.loads(await resp.read())
    conforms(body, schema)
    return body


def test_every_schema_is_valid_and_every_reference_resolves() -> None:
    for name, schema in DOCUMENT["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
        validator(name)  # builds
    refs = set(re.findall(r'"\$ref":"#/components/schemas/([^"]+)"', orjson.dumps(DOCUMENT).decode()))
    assert refs <= set(DOCUMENT["components"]["schemas"]), refs - set(DOCUMENT["components"]["schemas"])
    for path, ops in PATHS.items():
        for method, op in ops.items():
            assert op["responses"]["default"]["content"][PROBLEM_CONTENT_TYPE], (method, path)
            for param in re.findall(r"\{(\w+)\}", path):
                assert any(p["name"] == param and p["in"] == "path" for p in op["parameters"]), (method, path)


async def test_document_matches_the_registered_admin_routes(gateway_client: GatewayClientFactory) -> None:
    client, keys = await client_for(gateway_client)
    registered = {
        (route.method, route.resource.canonical)
        for route in client.server.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/admin")
        and route.method != "HEAD"  # aiohttp adds HEAD to every GET; the document says so
    }
    documented = {(method.upper(), path) for path, ops in PATHS.items() for method in ops}
    assert registered == documented
    served = await ok(await client.get("/admin/openapi.json", headers=auth(keys, "tadm")), "OpenApiDocument")
    assert served == orjson.loads(orjson.dumps(DOCUMENT)) and served["openapi"] == "3.1.0"


async def test_answers_validate_and_lists_page(gateway_client: GatewayClientFactory) -> None:
    client, keys = await client_for(gateway_client)
    ops = auth(keys, "ops")

    view = await ok(await client.get("/admin/servers", headers=ops), "ServerList")
    assert sorted(view["servers"]) == sorted(SERVERS) and view["next_cursor"] is None
    assert RFC3339_UTC.match(view["generated_at"])
    assert all("url" in inst for s in view["servers"].values() for inst in s["instances"])
    seen: list[str] = []
    cursor: str | None = None
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = await ok(await client.get(f"/admin/servers{query}", headers=ops), "ServerList")
        assert 1 <= len(page["servers"]) <= 3
        seen += list(page["servers"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(SERVERS)
    mine = await ok(await client.get("/admin/servers", headers=auth(keys, "tadm")), "ServerList")
    assert mine["tenant"] == "acme" and sorted(mine["servers"]) == ["alpha", "bravo", "charlie"]
    assert all("url" not in inst for s in mine["servers"].values() for inst in s["instances"])

    listed = await ok(await client.get("/admin/keys", headers=ops), "KeyList")
    assert sorted(k["id"] for k in listed["keys"]) == sorted(KEYS) and listed["next_cursor"] is None
    user1 = next(k for k in listed["keys"] if k["id"] == "user1")
    assert user1["expires_at"] == "2999-01-02T01:04:05.000000Z"  # +02:00 in keys.yaml, shown in UTC
    ids: list[str] = []
    cursor = None
    while True:
        query = "?limit=1" + (f"&cursor={cursor}" if cursor else "")
        page = await ok(await client.get(f"/admin/keys{query}", headers=ops), "KeyList")
        assert len(page["keys"]) == 1
        ids += [k["id"] for k in page["keys"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert ids == sorted(KEYS)
    own = await ok(await client.get("/admin/keys", headers=auth(keys, "tadm")), "KeyList")
    assert sorted(k["id"] for k in own["keys"]) == ["tadm", "user1"]  # no operator key, no other tenant's

    reloaded = await ok(await client.post("/admin/reload", headers=ops), "ReloadResult")
    assert reloaded["ok"] is True and reloaded["errors"] == []


async def test_every_admin_error_is_a_problem(gateway_client: GatewayClientFactory) -> None:
    client, keys = await client_for(gateway_client)
    ops, tadm = auth(keys, "ops"), auth(keys, "tadm")
    await problem(await client.get("/admin/keys"), 401, "missing_credentials")
    await problem(await client.get("/admin/keys", headers=auth(keys, "user1")), 403, "admin_scope_required")
    await problem(await client.post("/admin/reload", headers=tadm), 403, "operator_required")
    await problem(await client.get("/admin/keys?tenant=beta", headers=tadm), 403, "tenant_mismatch")
    for path in ("/admin/nope", "/admin", "/admin/keys/k1/nope"):
        await problem(await client.get(path), 404, "unknown_route")
        await problem(await client.get(path, headers=ops), 404, "unknown_route")
    wrong = await problem(await client.put("/admin/keys", headers=ops), 405, "method_not_allowed")
    assert wrong["detail"]
    assert (await client.put("/admin/keys", headers=ops)).headers["Allow"] == "GET,HEAD,POST".replace(",", ", ")
    for query, reason in (("limit=0", "bad_query"), ("limit=1001", "bad_query"), ("limit=x", "bad_query")):
        await problem(await client.get(f"/admin/keys?{query}", headers=ops), 400, reason)
        await problem(await client.get(f"/admin/servers?{query}", headers=ops), 400, reason)
    for cursor in ("!!", "bm90IGpzb24", "WyJhIl0"):  # not base64, not JSON, a key of the wrong length
        await problem(await client.get(f"/admin/keys?cursor={cursor}", headers=ops), 400, "bad_cursor")
    invalid = await problem(
        await client.post("/admin/keys", headers=ops, json={"tenant": "acme", "scopes": ["root"]}),
        400,
        "invalid_key_request",
    )
    assert invalid["problems"] and all(isinstance(p, str) for p in invalid["problems"])
    store = await client.post("/admin/keys", headers=ops, json={"tenant": "acme", "scopes": ["admin"]})
    await problem(store, 503, "key_store_unconfigured")
    assert store.headers["Retry-After"] == "60"
    audit = await client.get("/admin/audit", headers=ops)
    await problem(audit, 503, "audit_store_unconfigured")
    assert audit.headers["Retry-After"] == "60"
    # the MCP routes keep the JSON-RPC error contract
    mcp = await client.post("/mcp/alpha", data=b"{}", headers={"Content-Type": "application/json"})
    assert mcp.content_type == "application/json" and "jsonrpc" in orjson.loads(await mcp.read())
