"""Which upstream instance serves a request, and the session bookkeeping around it.

A request carrying `Mcp-Session-Id` goes to the instance that issued the session, and only for the principal that
created it (anyone else gets 404, like an unknown session, so a leaked id reveals nothing). A request without a
session goes to the instance picked by the balancer (the resilience stage may have picked it already).
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.context import RequestContext
from gateway.errors import SessionNotFound
from gateway.policy.servers import ServerPolicy
from gateway.sessions import SessionBinding, SessionStore

# chooses an instance URL for a new request to a server; replaced by the load balancer of the resilience stage
Picker = Callable[[RequestContext, ServerPolicy], str]


def first_upstream(ctx: RequestContext, server: ServerPolicy) -> str:
    return server.upstreams[0].url


async def bound_session(ctx: RequestContext, sessions: SessionStore) -> SessionBinding:
    """The binding of `ctx.session_id`, checked against the caller; sets `ctx.upstream_url`. 404 otherwise."""
    server = ctx.server
    assert server is not None and ctx.session_id is not None
    cached = ctx.session_binding
    if isinstance(cached, SessionBinding):
        # an earlier stage (the breaker's) already looked it up: one store round trip per request
        ctx.upstream_url = cached.upstream
        return cached
    pending, ctx.session_prefetch = ctx.session_prefetch, None
    binding = await sessions.get(ctx.server_name, ctx.session_id, pending)
    principal = ctx.principal.binding_id if ctx.principal is not None else None
    if binding is None or binding.principal != principal:
        raise SessionNotFound("unknown or expired session; initialize a new one", reason="session_not_found")
    if not any(u.url == binding.upstream for u in server.upstreams):
        # the instance left the policy: its sessions are gone with it
        await sessions.delete(ctx.server_name, ctx.session_id)
        raise SessionNotFound("session's upstream is gone; initialize a new one", reason="session_upstream_gone")
    ctx.upstream_url = binding.upstream
    ctx.session_binding = binding
    return binding


async def resolve_upstream(ctx: RequestContext, sessions: SessionStore, pick: Picker = first_upstream) -> str:
    """Set and return `ctx.upstream_url`. Idempotent: a stage that already resolved it is not repeated."""
    if ctx.upstream_url is not None:
        return ctx.upstream_url
    server = ctx.server
    assert server is not None
    if ctx.session_id is not None:
        return (await bound_session(ctx, sessions)).upstream
    ctx.upstream_url = pick(ctx, server)
    return ctx.upstream_url


async def after_response(ctx: RequestContext, sessions: SessionStore, status: int, new_session: str | None) -> None:
    """Record a session the upstream created, forget one it ended or no longer knows."""
    if ctx.session_id is None:
        if new_session and 200 <= status < 300 and ctx.principal is not None and ctx.upstream_url is not None:
            await sessions.put(
                ctx.server_name,
                new_session,
                SessionBinding(ctx.principal.binding_id, ctx.server_name, ctx.upstream_url),
            )
        return
    if status == 404 or (ctx.http_method == "DELETE" and 200 <= status < 300):
        await sessions.delete(ctx.server_name, ctx.session_id)
