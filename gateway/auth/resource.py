"""RFC 9728 protected-resource metadata for OAuth routes, at `/.well-known/oauth-protected-resource/mcp/{server}`.

`resource` is the route's audience (its URL unless policy sets `auth.jwt.audience`), so a client asks its
authorization server for a token bound to exactly this route (RFC 8707). Routes that are not OAuth routes have no
metadata: 404, so clients do not start OAuth discovery against an API-key route. A route with `oauth` in its
`auth.methods` names the built-in authorization server (gateway/oauth/) when it is on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from gateway.auth.state import AuthState, route_url
from gateway.policy.store import PolicyStore


def protected_resource_metadata(
    policy: PolicyStore, auth: AuthState
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The metadata handler over the policy store and the identity state (public URL, built-in OAuth tokens)."""

    async def handle(request: web.Request) -> web.Response:
        return _metadata(request, policy, auth)

    return handle


def _metadata(request: web.Request, policy: PolicyStore, auth: AuthState) -> web.Response:
    name = request.match_info["server"]
    server = policy.active.snapshot.servers.get(name)
    builtin = auth.oauth_tokens if server is not None and server.auth.builtin_oauth else None
    jwt_policy = server.auth.jwt if server is not None and server.auth.oauth else None
    if server is None or (builtin is None and jwt_policy is None):
        return web.Response(status=404, text="no OAuth protected resource here\n")
    public_url = auth.public_url
    servers: list[str] = []
    # the built-in server's tokens are bound to the route's own URL, so with it that is `resource`
    resource = route_url(public_url, name)
    scopes = ["read", "write"]
    if builtin is not None:
        servers.append(builtin.issuer)  # first: what an SDK client picks (the first listed)
    if jwt_policy is not None:
        servers.extend(jwt_policy.authorization_servers)
        if builtin is None:
            resource = jwt_policy.audience or resource
            scopes = sorted(jwt_policy.scope_map) if jwt_policy.scope_map else ["read", "write", "admin"]
    body = {
        "resource": resource,
        "authorization_servers": servers,
        "bearer_methods_supported": ["header"],
        "scopes_supported": scopes,
        "resource_name": server.description or name,
    }
    return web.Response(
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "max-age=300", "Access-Control-Allow-Origin": "*"},
    )
