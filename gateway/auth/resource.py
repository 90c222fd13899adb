"""RFC 9728 protected-resource metadata for OAuth routes, at `/.well-known/oauth-protected-resource/mcp/{server}`.

`resource` is the route's audience (its URL unless policy sets `auth.jwt.audience`), so a client asks its
authorization server for a token bound to exactly this route (RFC 8707). Routes that are not OAuth routes have no
metadata: 404, so clients do not start OAuth discovery against an API-key route.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.auth.state import AUTH, route_url
from gateway.policy.store import POLICY


async def protected_resource_metadata(request: web.Request) -> web.Response:
    name = request.match_info["server"]
    server = request.app[POLICY].active.snapshot.servers.get(name)
    if server is None or not server.auth.oauth or server.auth.jwt is None:
        return web.Response(status=404, text="no OAuth protected resource here\n")
    jwt_policy = server.auth.jwt
    public_url = request.app[AUTH].public_url
    scopes = sorted(jwt_policy.scope_map) if jwt_policy.scope_map else ["read", "write", "admin"]
    body = {
        "resource": jwt_policy.audience or route_url(public_url, name),
        "authorization_servers": list(jwt_policy.authorization_servers),
        "bearer_methods_supported": ["header"],
        "scopes_supported": scopes,
        "resource_name": server.description or name,
    }
    return web.Response(
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "max-age=300", "Access-Control-Allow-Origin": "*"},
    )
