"""Authentication of the admin API: a credential whose scopes include `admin`.

Reuses the chain's authn stage (same keys, same checks: revocation, expiry, IP allowlist) so there is one way to
prove who you are. The admin API is not an MCP route, so it accepts API keys only.
"""

from __future__ import annotations

from aiohttp import web

from gateway.auth.principal import Principal
from gateway.context import RequestContext
from gateway.errors import Forbidden, GatewayError, render_error
from gateway.policy.store import POLICY
from gateway.runtime import RUNTIME


async def require_admin(request: web.Request) -> Principal:
    """The caller's principal if it holds the admin scope; raises GatewayError otherwise."""
    active = request.app[POLICY].active
    authn = next(f for f in active.chain.filters if f.stage == "authn")
    ctx = RequestContext(
        request_id=request.headers.get("X-Request-ID", "admin"),
        snapshot=active.snapshot,
        server_name="_admin",
        server=None,
        # the same address the MCP routes see, so a key's IP allowlist means the same thing here
        client_ip=request.app[RUNTIME].client_ip.resolve(request.remote, request.headers.get("X-Forwarded-For")),
        transport="admin",
        http_method=request.method,
        request=request,
        headers=request.headers,
    )
    await authn(ctx)
    principal = ctx.principal
    if principal is None or principal.is_anonymous or "admin" not in principal.scopes:
        raise Forbidden("admin scope required", reason="admin_scope_required", stage="authz")
    return principal


def admin_error(err: GatewayError) -> web.Response:
    return render_error(err, None)
