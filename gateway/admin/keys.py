"""Admin API for API keys in PostgreSQL: create (the secret is shown once), list, revoke.

An admin credential manages the keys of its own tenant; one whose role is `operator` manages every tenant's.
keys.yaml keys are listed (source `policy`) but are changed by editing the file (`mcp-gateway keys ...
--policies`), never through this API. Every call is authenticated with `require_admin` and audited.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import orjson
import structlog
from aiohttp import web
from pydantic import Field, ValidationError, field_validator

from gateway.admin.audited import AdminAction, AdminHandler, audited_admin
from gateway.auth.apikeys import generate_key, hash_key
from gateway.auth.keyrecord import compile_networks
from gateway.auth.pgkeys import KeyExists, KeyRepository, NewKey
from gateway.auth.principal import Principal
from gateway.auth.state import AUTH, AuthState
from gateway.errors import Forbidden, GatewayError, InvalidRequest, NotFound, ServiceUnavailable
from gateway.policy.base import Model
from gateway.policy.keys import Scope
from gateway.policy.store import POLICY

log = structlog.get_logger("gateway.admin.keys")

OPERATOR_ROLE = "operator"


class CreateKeyRequest(Model):
    id: str | None = None
    tenant: str | None = None
    scopes: list[Scope] = Field(default_factory=lambda: list[Scope](["read"]))
    role: str = "user"
    allow_ips: list[str] = Field(default_factory=list)
    expires_at: datetime | None = None
    description: str = ""
    tools_allow: list[str] = Field(default_factory=list)
    tools_deny: list[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str | None) -> str | None:
        if v is not None and (not v.isalnum() or not v.isascii() or len(v) > 64):
            raise ValueError("key id must be 1-64 ASCII letters and digits")
        return v

    @field_validator("allow_ips")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        compile_networks(v)  # raises ValueError naming the bad network
        return v


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _tenant_scope(principal: Principal, wanted: str | None) -> str | None:
    """The tenant the call is limited to (None = every tenant, operators only)."""
    if principal.role == OPERATOR_ROLE:
        return wanted
    if principal.tenant is None:
        raise Forbidden("admin credential has no tenant", reason="tenant_required", stage="authz")
    if wanted is not None and wanted != principal.tenant:
        raise Forbidden("keys of another tenant", reason="tenant_mismatch", stage="authz")
    return principal.tenant


def _repo(state: AuthState) -> Any:
    if state.key_store is None:
        raise ServiceUnavailable(
            "the API key store needs PostgreSQL (postgres.dsn); keys.yaml keys are edited in the file",
            reason="key_store_unconfigured",
            retry_after=60,
        )
    return state.key_store


def _row_json(row: Any, usage: dict[str, tuple[int, float]]) -> dict[str, Any]:
    expires = row["expires_at"]
    revoked = row["revoked_at"]
    local = usage.get(row["id"])
    return {
        "id": row["id"],
        "source": "postgres",
        "tenant": row["tenant"],
        "scopes": list(row["scopes"]),
        "role": row["role"],
        "allow_ips": [str(n) for n in row["allow_ips"]],
        "tools": {"allow": list(row["tools_allow"]), "deny": list(row["tools_deny"])},
        "description": row["description"],
        "created_at": row["created_at"].isoformat(),
        "expires_at": expires.isoformat() if expires is not None else None,
        "revoked": revoked is not None,
        "revoked_at": revoked.isoformat() if revoked is not None else None,
        # flushed counts of every replica; requests of this process since its last flush are not in it yet
        "request_count": int(row["request_count"] or 0),
        "last_used_at": row["last_used_at"].isoformat() if row["last_used_at"] is not None else None,
        "process_request_count": local[0] if local else 0,
    }


async def _list(request: web.Request, principal: Principal) -> web.Response:
    state = request.app[AUTH]
    tenant = _tenant_scope(principal, request.query.get("tenant"))
    usage = state.usage.totals()
    snapshot = request.app[POLICY].active.snapshot
    out: list[dict[str, Any]] = []
    for key in snapshot.keys.values():
        if tenant is not None and key.tenant != tenant:
            continue
        local = usage.get(key.id)
        out.append(
            {
                "id": key.id,
                "source": "policy",
                "tenant": key.tenant,
                "scopes": list(key.scopes),
                "role": key.role,
                "allow_ips": list(key.allow_ips),
                "tools": {"allow": list(key.tools.allow), "deny": list(key.tools.deny)},
                "description": key.description,
                "expires_at": key.expires_at.isoformat() if key.expires_at is not None else None,
                "revoked": key.revoked,
                "process_request_count": local[0] if local else 0,
            }
        )
    if state.key_store is not None:
        pool = await state.key_store.pool()
        rows = await KeyRepository(pool).list(tenant)
        out.extend(_row_json(r, usage) for r in rows)
    return _json({"keys": out})


async def _create(request: web.Request, principal: Principal) -> web.Response:
    state = request.app[AUTH]
    store = _repo(state)
    try:
        body = CreateKeyRequest.model_validate_json(await request.read())
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise InvalidRequest("invalid key request", reason="invalid_key_request", data={"problems": problems}) from None
    tenant = _tenant_scope(principal, body.tenant) or body.tenant
    if tenant is None:
        raise InvalidRequest("tenant is required", reason="tenant_required")
    snapshot = request.app[POLICY].active.snapshot
    if tenant not in snapshot.tenants:
        raise InvalidRequest(f"unknown tenant {tenant!r}", reason="unknown_tenant")
    if body.id is not None and body.id in snapshot.keys:
        raise InvalidRequest(f"key id {body.id!r} is taken by keys.yaml", reason="key_exists")
    if not state.hmac_secret:
        raise ServiceUnavailable("API key secret unavailable", reason="key_secret_unavailable", retry_after=60)
    key_id, raw = generate_key(body.id)
    new = NewKey(
        id=key_id,
        hash=hash_key(state.hmac_secret, raw),
        tenant=tenant,
        scopes=body.scopes,
        role=body.role,
        allow_ips=body.allow_ips,
        tools_allow=body.tools_allow,
        tools_deny=body.tools_deny,
        description=body.description,
        expires_at=body.expires_at,
    )
    try:
        row = await KeyRepository(await store.pool()).create(new)
    except KeyExists:
        raise InvalidRequest(f"key id {key_id!r} exists", reason="key_exists") from None
    store.invalidate(key_id)  # a cached "unknown id" must not outlive the key's creation
    log.info("API key created", key_id=key_id, tenant=tenant, by=principal.subject)
    out = _row_json({**dict(row), "request_count": 0, "last_used_at": None}, {})
    out["key"] = raw  # shown this once; only its hash is stored
    return _json(out, status=201)


async def _revoke(request: web.Request, principal: Principal) -> web.Response:
    state = request.app[AUTH]
    store = _repo(state)
    key_id = request.match_info["key_id"]
    tenant = _tenant_scope(principal, None)
    if key_id in request.app[POLICY].active.snapshot.keys:
        raise InvalidRequest("keys.yaml keys are revoked in the file (revoked: true)", reason="policy_key")
    found = await KeyRepository(await store.pool()).revoke(key_id, tenant)
    if not found:
        # an unknown key, not a refused request: 404 is right here (this is not an MCP route)
        raise NotFound(f"no key {key_id!r}", reason="unknown_key")
    store.invalidate(key_id)
    log.info("API key revoked", key_id=key_id, by=principal.subject)
    return _json({"id": key_id, "revoked": True})


def _store_unavailable(exc: Exception) -> GatewayError | None:
    if isinstance(exc, OSError | TimeoutError | asyncpg.PostgresError | asyncpg.InterfaceError):
        log.warning("API key store unavailable", error=type(exc).__name__)
        return ServiceUnavailable("API key store unavailable", reason="key_store_unavailable", retry_after=5)
    return None


def _handler(action: str, fn: AdminAction) -> AdminHandler:
    return audited_admin(f"admin/keys.{action}", fn, _store_unavailable)


def install_routes(app: web.Application) -> None:
    app.router.add_get("/admin/keys", _handler("list", _list))
    app.router.add_post("/admin/keys", _handler("create", _create))
    app.router.add_post("/admin/keys/{key_id}/revoke", _handler("revoke", _revoke))
    app.router.add_delete("/admin/keys/{key_id}", _handler("revoke", _revoke))
