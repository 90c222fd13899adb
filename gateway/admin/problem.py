"""Admin API errors as RFC 9457 problem details (`application/problem+json`), not JSON-RPC envelopes.

`/admin/*` is a REST API for operators' tools, which expect HTTP's own error format; the MCP routes keep the
JSON-RPC error contract (gateway/errors.py). Every admin refusal, whoever makes it (the admin handler, the
Host/Origin check, aiohttp's routing for an unknown admin path or method), is rendered here from the same
`GatewayError`, so status, headers, audit and metrics are the same as before; only the body changes:

    {"type": "tag:mcp-gateway,2026:problem:unknown_key", "title": "Not Found", "status": 404,
     "detail": "no key 'k9'", "reason": "unknown_key", "stage": "admin"}

`type` names the refusal's stable reason (a tag URI, RFC 4151: it identifies, it is not fetched); `title` is the
status's phrase, the same for every occurrence of a type; `reason` repeats the type's last part for clients that
branch on it; the error's structured data (`problems`, `fields`, ...) are extension members.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import GatewayError

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "tag:mcp-gateway,2026:problem:"
# RFC 9457's own members: an error's data never overrides them
_STANDARD = frozenset({"type", "title", "status", "detail", "instance"})


def is_admin_api_path(path: str) -> bool:
    """The paths whose errors are problem details (`/metrics` is not part of the admin API)."""
    return path == "/admin" or path.startswith("/admin/")


def problem_of(err: GatewayError) -> dict[str, Any]:
    try:
        title = HTTPStatus(err.status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + err.reason,
        "title": title,
        "status": err.status,
        "detail": err.message,
        "reason": err.reason,
    }
    if err.stage:
        body["stage"] = err.stage
    for name, value in err.data.items():
        if name not in _STANDARD:
            body.setdefault(name, value)
    return body


def render_problem(
    err: GatewayError, *, request_id: str | None = None, extra_headers: Mapping[str, str] | None = None
) -> web.Response:
    headers: dict[str, str] = dict(extra_headers or {})
    headers.update(err.headers)
    if request_id:
        headers["X-Request-ID"] = request_id
    headers["Cache-Control"] = "no-store"
    return web.Response(
        status=err.status, body=orjson.dumps(problem_of(err)), content_type=PROBLEM_CONTENT_TYPE, headers=headers
    )
