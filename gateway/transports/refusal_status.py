"""Which HTTP status a refusal is sent with: its own, or 200 with the same JSON-RPC error body.

Measured with the official SDKs (docs/transports.md, "Refusal status"): the Python SDK 1.x Streamable HTTP client
raises `HTTPStatusError` for any non-2xx answer to a POST other than 404, which ends its whole session (an
`ExceptionGroup` out of the transport's task group); its legacy SSE client, and the 2.x one, stop sending after any
non-2xx POST. The TypeScript SDK 1.x and Python SDK 2.x read a JSON-RPC error from a 4xx body too, but only a 200
lets TypeScript surface it as an `McpError` with the gateway's code and data. So with `compat_status_200: auto`
(the default) a refusal of a JSON-RPC message a client POSTed inside the protocol, made after authentication
(a scope or tool rule, a rate limit, a session cap, an open breaker, an upstream failure), is answered with 200 on
the transports and era those clients speak, unless it is the `initialize` that would open the session; everything
that HTTP-level tools and the SDKs' own logic need to see keeps its status.
"""

from __future__ import annotations

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.policy.servers import ServerPolicy

# Protocol and transport errors keep their status whatever the setting: 400 (malformed, header mismatch, duplicate
# id), 404 (what tells every SDK to re-initialize), 405 (what makes a dual-transport client fall back to SSE), 413.
ALWAYS_TRUTHFUL = frozenset({400, 404, 405, 413})
# the chain stages that judge the JSON-RPC message of an authenticated caller (gateway/chain.py); refusals before
# them (client guard, Host/Origin, authentication, HTTP parsing and deadlines) are about the HTTP client itself
MESSAGE_STAGES = frozenset({"authz", "ratelimit", "session", "breaker", "forward"})


def status_200(ctx: RequestContext, server: ServerPolicy | None, err: GatewayError) -> bool:
    """Whether `err` goes out as HTTP 200 instead of `err.status` (the body is the same either way)."""
    if err.status in ALWAYS_TRUTHFUL:
        return False
    setting = server.compat_status_200 if server is not None else "auto"
    if setting is True:
        return True
    if setting is False:
        return False
    return _auto(ctx, err)


def _auto(ctx: RequestContext, err: GatewayError) -> bool:
    # an authentication challenge (401, 403 insufficient_scope) starts the SDKs' OAuth and step-up flows
    if err.status == 401 or "WWW-Authenticate" in err.headers:
        return False
    # GET streams, DELETE and WebSocket upgrades carry no JSON-RPC request to answer: the SDKs handle their
    # status (a GET stream is retried, a DELETE logged, an upgrade fails to connect)
    if ctx.http_method != "POST" or ctx.message is None:
        return False
    if err.stage not in MESSAGE_STAGES:
        return False
    # `initialize` opens a session rather than using one: like a refused WebSocket upgrade or legacy SSE GET, a
    # client that cannot connect learns why from the status too, and HTTP tools see the 429 of a session cap
    if ctx.method == "initialize":
        return False
    # 2026-07-28 is spoken by the Python SDK 2.x, which reads the JSON-RPC error of a 4xx body as the answer
    return ctx.notes.get("era") != "modern"
