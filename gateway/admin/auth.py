"""Authentication of the admin API: an API key whose scopes include `admin`.

Reuses the chain's authn stage (same keys, same checks: revocation, expiry, IP allowlist) so there is one way to
prove who you are. The admin API is not an MCP route, so it accepts API keys only: authn gives it the admin route
(`_admin`, a name no server may take, see `gateway/policy/servers.py`), and a principal that is not an API key is
refused here as well, so no route's JWT or anonymous settings can ever open the admin API.
"""

from __future__ import annotations

from aiohttp import web

from gateway.admin.problem import render_problem
from gateway.auth.principal import Principal
from gateway.clientip import ClientIpResolver, forwarded_for
from gateway.context import RequestContext
from gateway.errors import Forbidden, GatewayError
from gateway.policy.servers import ADMIN_SERVER
from gateway.policy.store import PolicyStore


async def require_admin(request: web.Request, policy: PolicyStore, client_ip: ClientIpResolver) -> Principal:
    """The caller's principal if it holds the admin scope; raises GatewayError otherwise."""
    active = policy.active
    authn = next(f for f in active.chain.filters if f.stage == "authn")
    ctx = RequestContext(
        request_id=request.headers.get("X-Request-ID", "admin"),
        snapshot=active.snapshot,
        server_name=ADMIN_SERVER,
        server=None,
        # the same address the MCP routes see, so a key's IP allowlist means the same thing here
        client_ip=client_ip.resolve(request.remote, forwarded_for(request.headers)),
        transport="admin",
        http_method=request.method,
        request=request,
        headers=request.headers,
    )
    await authn(ctx)
    principal = ctx.principal
    if principal is None or principal.is_anonymous or "admin" not in principal.scopes:
        raise Forbidden("admin scope required", reason="admin_scope_required", stage="authz")
    if principal.method != "api_key" or principal.tenant is None:
        raise Forbidden("the admin API takes API keys only", reason="admin_scope_required", stage="authz")
    return principal


def admin_error(err: GatewayError, request_id: str | None = None) -> web.Response:
    return render_problem(err, request_id=request_id)
