"""Admin API for API keys in PostgreSQL: create (the secret is shown once), list, revoke.

Who may do what is the admin model (`gateway/admin/model.py`): an operator manages every tenant's keys; a tenant
admin the keys of its own tenant, never an operator key. A key never creates a key with more power than its own
(`gateway/admin/grant.py`). A key the caller may not see is answered exactly like a key that does not exist (404),
so key ids of other tenants cannot be probed. keys.yaml keys are listed (source `policy`) but are changed by
editing the file (`mcp-gateway keys ... --policies`), never through this API. Every call is authenticated with
`require_admin` and audited, in the trail of the tenant whose keys it concerns too.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any

import asyncpg
import orjson
import structlog
from aiohttp import web
from pydantic import Field, StringConstraints, ValidationError, field_validator

from gateway.admin.audited import AdminAction, AdminGate, AdminHandler
from gateway.admin.grant import DEFAULT_ROLE, KeyPower, exceeds, known_roles
from gateway.admin.model import is_operator, may_see_key
from gateway.admin.paging import list_answer, paginate, parse_page, rfc3339
from gateway.auth.apikeys import generate_key, hash_key
from gateway.auth.keyrecord import compile_networks
from gateway.auth.pgkeys import KeyExists, KeyRepository, NewKey
from gateway.auth.principal import Principal
from gateway.auth.state import AuthState
from gateway.errors import BodyTooLarge, Forbidden, GatewayError, InvalidRequest, NotFound, ServiceUnavailable
from gateway.policy.base import Model
from gateway.policy.keys import Scope
from gateway.policy.store import PolicyStore

log = structlog.get_logger("gateway.admin.keys")

MAX_BODY = 64 * 1024
MAX_TENANT = 128
MAX_KEY_ID = 64


def _printable(v: str) -> str:
    if any(c < " " or c == "\x7f" for c in v):
        raise ValueError("must not contain control characters")
    return v


Pattern = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class CreateKeyRequest(Model):
    """POST /admin/keys. Every field is bounded: it is stored, logged and shown to other admins."""

    id: str | None = None
    tenant: str | None = Field(None, min_length=1, max_length=MAX_TENANT)
    scopes: list[Scope] = Field(default_factory=lambda: list[Scope](["read"]), min_length=1, max_length=3)
    # default: `user` for an operator, the creator's own role for a tenant admin
    role: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    allow_ips: list[str] = Field(default_factory=list, max_length=64)
    expires_at: datetime | None = None
    description: str = Field("", max_length=1024)
    tools_allow: list[Pattern] = Field(default_factory=list, max_length=256)
    tools_deny: list[Pattern] = Field(default_factory=list, max_length=256)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str | None) -> str | None:
        if v is not None and (not v.isalnum() or not v.isascii() or len(v) > MAX_KEY_ID):
            raise ValueError("key id must be 1-64 ASCII letters and digits")
        return v

    @field_validator("scopes")
    @classmethod
    def _unique(cls, v: list[Scope]) -> list[Scope]:
        if len(set(v)) != len(v):
            raise ValueError("scopes must not repeat")
        return v

    @field_validator("allow_ips")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        if any(len(c) > 64 for c in v):
            raise ValueError("a network is at most 64 characters")
        compile_networks(v)  # raises ValueError naming the bad network
        return v

    @field_validator("expires_at")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        # a naive time means UTC, as in keys.yaml, whatever the host's zone
        return v if v is None or v.tzinfo is not None else v.replace(tzinfo=UTC)

    @field_validator("description", "tenant")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        return v if v is None else _printable(v)

    @field_validator("tools_allow", "tools_deny")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for p in v:
            _printable(p)
        return v


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _mismatch() -> Forbidden:
    return Forbidden("keys of another tenant", reason="tenant_mismatch", stage="authz")


def _query_tenant(request: web.Request) -> str | None:
    wanted = request.query.get("tenant")
    if wanted is None or wanted == "":
        return None
    if len(wanted) > MAX_TENANT or not wanted.isprintable():
        raise InvalidRequest("tenant is too long or not text", reason="bad_query")
    return wanted


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
        "created_at": rfc3339(row["created_at"]),
        "expires_at": rfc3339(expires),
        "revoked": revoked is not None,
        "revoked_at": rfc3339(revoked),
        # flushed counts of every replica; requests of this process since its last flush are not in it yet
        "request_count": int(row["request_count"] or 0),
        "last_used_at": rfc3339(row["last_used_at"]),
        "process_request_count": local[0] if local else 0,
    }


@dataclass(frozen=True, slots=True)
class _Keys:
    """What the key routes use, given at route wiring."""

    gate: AdminGate
    auth: AuthState
    policy: PolicyStore
    # told of a key this process revoked: ends the key's open event streams here (other replicas notice the
    # revocation within the key cache's TTL, on the key's next request)
    on_revoked: Callable[[str], object] | None = None


async def _list(keys: _Keys, request: web.Request, principal: Principal) -> web.Response:
    state = keys.auth
    wanted = _query_tenant(request)
    page = parse_page(request.query, 2)
    tenant: str | None
    if is_operator(principal):
        tenant = wanted  # None: every tenant
    else:
        if wanted is not None and wanted != principal.tenant:
            keys.gate.set_target_tenant(request, wanted)
            raise _mismatch()
        tenant = principal.tenant
    keys.gate.set_target_tenant(request, tenant)
    usage = state.usage.totals()
    snapshot = keys.policy.active.snapshot
    out: list[dict[str, Any]] = []
    for key in snapshot.keys.values():
        if (tenant is not None and key.tenant != tenant) or not may_see_key(principal, key.tenant, key.role):
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
                "expires_at": rfc3339(key.expires_at),
                "revoked": key.revoked,
                "process_request_count": local[0] if local else 0,
            }
        )
    if state.key_store is not None:
        pool = await state.key_store.pool()
        rows = await KeyRepository(pool).list(tenant)
        out.extend(_row_json(r, usage) for r in rows if may_see_key(principal, r["tenant"], r["role"]))
    # by id (a keys.yaml id cannot be created in PostgreSQL, but keys.yaml may gain one later: the source breaks ties)
    shown, next_cursor = paginate(out, lambda k: (k["id"], k["source"]), page)
    return _json(list_answer("keys", shown, next_cursor))


async def _read_body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BodyTooLarge(f"a key request is at most {MAX_BODY} bytes", stage="admin")
    raw = bytearray()
    async for chunk in request.content.iter_chunked(16384):
        raw += chunk
        if len(raw) > MAX_BODY:
            raise BodyTooLarge(f"a key request is at most {MAX_BODY} bytes", stage="admin")
    try:
        return orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not JSON", reason="invalid_key_request") from None


def _parse_create(data: Any) -> CreateKeyRequest:
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object", reason="invalid_key_request")
    try:
        return CreateKeyRequest.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise InvalidRequest("invalid key request", reason="invalid_key_request", data={"problems": problems}) from None


async def _create(keys: _Keys, request: web.Request, principal: Principal) -> web.Response:
    state = keys.auth
    data = await _read_body(request)
    if isinstance(data, dict) and isinstance(data.get("tenant"), str):
        keys.gate.set_target_tenant(
            request, data["tenant"]
        )  # the tenant it is aimed at sees the attempt, refused or not
    body = _parse_create(data)
    snapshot = keys.policy.active.snapshot
    operator = is_operator(principal)
    tenant = body.tenant if body.tenant is not None or operator else principal.tenant
    if not operator and tenant != principal.tenant:
        raise _mismatch()
    if tenant is None:
        raise InvalidRequest("tenant is required", reason="tenant_required")
    if tenant not in snapshot.tenants:
        raise InvalidRequest(f"unknown tenant {tenant!r}", reason="unknown_tenant")
    role = body.role if body.role is not None else DEFAULT_ROLE if operator else principal.role
    if role not in known_roles(snapshot):
        raise InvalidRequest(
            f"unknown role {role!r}: use user, operator or a role the policy names", reason="unknown_role"
        )
    expires = body.expires_at.timestamp() if body.expires_at is not None else None
    if expires is not None and expires <= time.time():
        raise InvalidRequest("expires_at is in the past", reason="invalid_key_request")
    power = KeyPower(
        role=role,
        scopes=frozenset(body.scopes),
        networks=compile_networks(body.allow_ips),
        expires_at=expires,
        tools_allow=tuple(body.tools_allow),
        tools_deny=tuple(body.tools_deny),
    )
    over = exceeds(principal, power)
    if over:
        raise Forbidden(
            "a key cannot create a key with more power than its own",
            reason="exceeds_creator",
            stage="authz",
            data={"fields": over},
        )
    if body.id is not None and body.id in snapshot.keys:
        raise InvalidRequest(f"key id {body.id!r} is taken by keys.yaml", reason="key_exists")
    store = _repo(state)
    if not state.hmac_secret:
        raise ServiceUnavailable("API key secret unavailable", reason="key_secret_unavailable", retry_after=60)
    key_id, raw = generate_key(body.id)
    new = NewKey(
        id=key_id,
        hash=hash_key(state.hmac_secret, raw),
        tenant=tenant,
        scopes=body.scopes,
        role=role,
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
    log.info("API key created", key_id=key_id, tenant=tenant, role=role, by=principal.subject)
    out = _row_json({**dict(row), "request_count": 0, "last_used_at": None}, {})
    out["key"] = raw  # shown this once; only its hash is stored
    return _json(out, status=201)


def _no_key(key_id: str) -> NotFound:
    # an unknown key, not a refused request: 404 is right here (this is not an MCP route)
    return NotFound(f"no key {key_id!r}", reason="unknown_key")


async def _revoke(keys: _Keys, request: web.Request, principal: Principal) -> web.Response:
    state = keys.auth
    key_id = request.match_info["key_id"]
    if not key_id.isalnum() or not key_id.isascii() or len(key_id) > MAX_KEY_ID:
        raise NotFound("no such key", reason="unknown_key")  # no key can have this id; not echoed
    policy_key = keys.policy.active.snapshot.keys.get(key_id)
    if policy_key is not None:
        keys.gate.set_target_tenant(request, policy_key.tenant)
        if may_see_key(principal, policy_key.tenant, policy_key.role):
            raise InvalidRequest("keys.yaml keys are revoked in the file (revoked: true)", reason="policy_key")
        # another tenant's keys.yaml key: answered below exactly like an id nobody has
    store = _repo(state)
    repo = KeyRepository(await store.pool())
    row = await repo.get(key_id)
    if row is not None:
        keys.gate.set_target_tenant(request, row["tenant"])
    if row is None or not may_see_key(principal, row["tenant"], row["role"]):
        raise _no_key(key_id)
    if not await repo.revoke(key_id, row["tenant"]):
        raise _no_key(key_id)
    # fetched again at once, not only forgotten: a WebSocket of this key closes on its next frame either way
    await store.refresh(key_id)
    if keys.on_revoked is not None:
        keys.on_revoked(key_id)
    log.info("API key revoked", key_id=key_id, tenant=row["tenant"], by=principal.subject)
    return _json({"id": key_id, "revoked": True})


def _store_unavailable(exc: Exception) -> GatewayError | None:
    if isinstance(exc, OSError | TimeoutError | asyncpg.PostgresError | asyncpg.InterfaceError):
        log.warning("API key store unavailable", error=type(exc).__name__)
        return ServiceUnavailable("API key store unavailable", reason="key_store_unavailable", retry_after=5)
    return None


def _handler(
    keys: _Keys, action: str, fn: Callable[[_Keys, web.Request, Principal], Awaitable[web.Response]]
) -> AdminHandler:
    bound: AdminAction = partial(fn, keys)
    return keys.gate.route(f"admin/keys.{action}", bound, _store_unavailable)


def install_routes(
    app: web.Application,
    gate: AdminGate,
    auth: AuthState,
    policy: PolicyStore,
    on_revoked: Callable[[str], object] | None = None,
) -> None:
    keys = _Keys(gate, auth, policy, on_revoked)
    app.router.add_get("/admin/keys", _handler(keys, "list", _list))
    app.router.add_post("/admin/keys", _handler(keys, "create", _create))
    app.router.add_post("/admin/keys/{key_id}/revoke", _handler(keys, "revoke", _revoke))
    app.router.add_delete("/admin/keys/{key_id}", _handler(keys, "revoke", _revoke))
