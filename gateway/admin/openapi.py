"""`GET /admin/openapi.json` (admin scope): the admin API described in OpenAPI 3.1, from this module.

Written by hand next to the routes it describes; tests/inprocess/test_admin_openapi.py fails when a registered
`/admin/*` route is missing here or a path here is not registered, and validates real answers against these
schemas. The key-creation body's schema is generated from its pydantic model (gateway/admin/keys.py), so the
document cannot drift from what the handler accepts. Schemas are JSON Schema 2020-12 (OpenAPI 3.1's dialect).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.admin.audited import AdminGate
from gateway.admin.keys import CreateKeyRequest
from gateway.admin.paging import DEFAULT_LIMIT, MAX_LIMIT
from gateway.admin.problem import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_PREFIX
from gateway.auth.principal import Principal
from gateway.version import VERSION

REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


PROBLEM_RESPONSE = {
    "description": "a refusal (RFC 9457 problem details): 400 bad input, 401 no or bad credential, 403 not allowed, "
    "404 no such key or path, 405 wrong method (with Allow), 413 body too large, 421 bad Host, 422 invalid "
    "policy, 503 backend unavailable (with Retry-After)",
    "content": {PROBLEM_CONTENT_TYPE: {"schema": _ref("Problem")}},
}
NULLABLE_STRING = {"type": ["string", "null"]}
TIMESTAMP = {
    "type": "string",
    "format": "date-time",
    "description": "RFC 3339, UTC, microseconds",
    "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$",
}
NULLABLE_TIMESTAMP = {"oneOf": [_ref("Timestamp"), {"type": "null"}]}
CURSOR = {"type": ["string", "null"], "description": "pass as `cursor` for the next page; null on the last page"}
PAGE_PARAMETERS = [
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    },
    {"name": "cursor", "in": "query", "schema": {"type": "string", "maxLength": 512}},
]
TENANT_PARAMETER = {"name": "tenant", "in": "query", "schema": {"type": "string", "maxLength": 128}}
KEY_ID_PARAMETER = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}


def _create_key_schemas() -> dict[str, Any]:
    schema = CreateKeyRequest.model_json_schema(ref_template=REF)
    defs = schema.pop("$defs", {})
    return {**defs, "CreateKeyRequest": schema}


KEY_FIELDS: dict[str, Any] = {
    "type": "object",
    "required": ["id", "source", "tenant", "scopes", "role", "allow_ips", "tools", "description", "expires_at"],
    "properties": {
        "id": {"type": "string"},
        "source": {"enum": ["policy", "postgres"]},
        "tenant": {"type": "string"},
        "scopes": {"type": "array", "items": {"enum": ["read", "write", "admin"]}},
        "role": {"type": "string"},
        "allow_ips": {"type": "array", "items": {"type": "string"}},
        "tools": {
            "type": "object",
            "required": ["allow", "deny"],
            "additionalProperties": False,
            "properties": {
                "allow": {"type": "array", "items": {"type": "string"}},
                "deny": {"type": "array", "items": {"type": "string"}},
            },
        },
        "description": {"type": "string"},
        "expires_at": NULLABLE_TIMESTAMP,
        "revoked": {"type": "boolean"},
        "revoked_at": NULLABLE_TIMESTAMP,
        "created_at": _ref("Timestamp"),
        "request_count": {"type": "integer", "minimum": 0},
        "last_used_at": NULLABLE_TIMESTAMP,
        "process_request_count": {"type": "integer", "minimum": 0},
    },
}

SCHEMAS: dict[str, Any] = {
    "Timestamp": TIMESTAMP,
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details; the error's structured data are extension members",
        "required": ["type", "title", "status", "detail", "reason"],
        "properties": {
            "type": {"type": "string", "format": "uri", "pattern": f"^{PROBLEM_TYPE_PREFIX}[a-z0-9_]+$"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "reason": {"type": "string"},
            "stage": {"type": "string"},
            "problems": {"type": "array", "items": {"type": "string"}},
            "fields": {"type": "array", "items": {"type": "string"}},
            "retryAfterSeconds": {"type": "integer"},
        },
    },
    "KeyFields": KEY_FIELDS,
    "Key": {"allOf": [_ref("KeyFields")], "unevaluatedProperties": False},
    "KeyCreated": {
        "allOf": [_ref("KeyFields"), {"required": ["key", "created_at"], "properties": {"key": {"type": "string"}}}],
        "unevaluatedProperties": False,
    },
    "KeyList": {
        "type": "object",
        "required": ["keys", "next_cursor"],
        "additionalProperties": False,
        "properties": {"keys": {"type": "array", "items": _ref("Key")}, "next_cursor": CURSOR},
    },
    "KeyRevoked": {
        "type": "object",
        "required": ["id", "revoked"],
        "additionalProperties": False,
        "properties": {"id": {"type": "string"}, "revoked": {"const": True}},
    },
    **_create_key_schemas(),
    "AuditPage": {
        "type": "object",
        "required": ["records", "next_cursor", "tenant"],
        "additionalProperties": False,
        "properties": {
            "records": {
                "type": "array",
                "items": {
                    "type": "object",
                    "description": "an audit record exactly as hashed into its chain (docs/audit.md)",
                    "required": ["id", "ts"],
                    "properties": {"id": {"type": "string"}, "ts": _ref("Timestamp")},
                },
            },
            "next_cursor": CURSOR,
            "tenant": {"type": "string"},
        },
    },
    "Instance": {
        "type": "object",
        "required": ["weight", "health", "breaker", "outstanding"],
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "description": "operators only (userinfo and query redacted)"},
            "instance": {"type": "integer", "minimum": 0, "description": "tenant admins: the position instead of url"},
            "weight": {"type": "integer"},
            "health": {
                "type": "object",
                "required": ["status"],
                "properties": {"status": {"type": "string"}, "last_checked": NULLABLE_TIMESTAMP},
            },
            "breaker": {
                "type": "object",
                "required": ["state"],
                "properties": {"state": {"type": "string"}, "last_error_at": NULLABLE_TIMESTAMP},
            },
            "outstanding": {"type": "integer", "minimum": 0},
        },
    },
    "Server": {
        "type": "object",
        "required": ["transport", "load_balancing", "breaker_mode", "health_kind", "instances"],
        "additionalProperties": False,
        "properties": {
            "transport": {"type": "string"},
            "load_balancing": {"type": "string"},
            "breaker_mode": {"type": "string"},
            "health_kind": {"type": "string"},
            "instances": {"type": "array", "items": _ref("Instance")},
        },
    },
    "ServerList": {
        "type": "object",
        "required": ["policy_version", "breaker_state_shared", "generated_at", "servers", "next_cursor"],
        "additionalProperties": False,
        "properties": {
            "policy_version": {"type": "string"},
            "breaker_state_shared": {"type": "boolean"},
            "generated_at": _ref("Timestamp"),
            "servers": {"type": "object", "additionalProperties": _ref("Server")},
            "next_cursor": CURSOR,
            "tenant": {"type": "string", "description": "tenant admins: whose servers these are"},
        },
    },
    "ReloadResult": {
        "type": "object",
        "required": ["ok", "version", "changed", "errors"],
        "additionalProperties": False,
        "properties": {
            "ok": {"type": "boolean"},
            "version": NULLABLE_STRING,
            "changed": {"type": "boolean"},
            "errors": {"type": "array", "items": {"type": "string"}},
        },
    },
    "OpenApiDocument": {"type": "object", "required": ["openapi", "info", "paths"]},
}


def _op(summary: str, ok: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**ok, "default": PROBLEM_RESPONSE}, **extra}


PATHS: dict[str, Any] = {
    "/admin/keys": {
        "get": _op(
            "API keys: keys.yaml (source policy) and PostgreSQL keys, by id",
            {"200": _json("KeyList", "a page of keys")},
            parameters=[TENANT_PARAMETER, *PAGE_PARAMETERS],
        ),
        "post": _op(
            "create a PostgreSQL key; the secret is in the answer once",
            {"201": _json("KeyCreated", "the key, with `key`")},
            requestBody={"required": True, "content": {"application/json": {"schema": _ref("CreateKeyRequest")}}},
        ),
    },
    "/admin/keys/{key_id}": {
        "delete": _op(
            "revoke a PostgreSQL key", {"200": _json("KeyRevoked", "revoked")}, parameters=[KEY_ID_PARAMETER]
        ),
    },
    "/admin/keys/{key_id}/revoke": {
        "post": _op("revoke a PostgreSQL key", {"200": _json("KeyRevoked", "revoked")}, parameters=[KEY_ID_PARAMETER]),
    },
    "/admin/audit": {
        "get": _op(
            "audit records of one tenant, newest first",
            {"200": _json("AuditPage", "a page of records")},
            parameters=[
                TENANT_PARAMETER,
                *PAGE_PARAMETERS,
                *(
                    {"name": name, "in": "query", "schema": {"type": "string"}}
                    for name in ("from", "to", "server", "method", "decision", "stage", "request_id")
                ),
            ],
        ),
    },
    "/admin/servers": {
        "get": _op(
            "servers and their instances: health, breaker, outstanding requests",
            {"200": _json("ServerList", "a page of servers, by name")},
            parameters=PAGE_PARAMETERS,
        ),
    },
    "/admin/reload": {
        "post": _op(
            "reload the policy files now (operators)",
            {
                "200": _json("ReloadResult", "reloaded"),
                "422": _json("ReloadResult", "the policy is invalid; the last good one keeps serving"),
            },
        ),
    },
    "/admin/openapi.json": {
        "get": _op("this document", {"200": _json("OpenApiDocument", "OpenAPI 3.1")}),
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "MCP gateway admin API",
        "version": VERSION,
        "description": "Admin-scope API keys only (docs/identity.md, admin model). Errors are RFC 9457 problem "
        "details; times are RFC 3339 UTC; lists take limit and cursor. A GET also answers HEAD.",
    },
    "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
    "security": [{"bearer": []}, {"apiKeyHeader": []}],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "an API key with the admin scope"},
            "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        },
    },
}
_BODY = orjson.dumps(DOCUMENT)


async def _document(request: web.Request, principal: Principal) -> web.Response:
    return web.Response(body=_BODY, content_type="application/json", headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application, gate: AdminGate) -> None:
    app.router.add_get("/admin/openapi.json", gate.route("admin/openapi", _document))
