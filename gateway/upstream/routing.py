"""Which upstream instance serves a request, and the session bookkeeping around it.

A request carrying `Mcp-Session-Id` goes to the instance that issued the session, and only for the principal that
created it (anyone else gets 404, like an unknown session, so a leaked id reveals nothing). That holds for every
request that carries one, whatever era it claims and whatever its method or transport: a client cannot choose its
way around the check. A request without a session goes to the instance picked by the balancer. Which of the two
applies, and when, is decided in one place: `UpstreamChoice` (gateway/upstream/choice.py).

A binding is created once, by the upstream answer that issued the session, and never changes owner. A request that
may create a session reserves a place under the caller's and its tenant's session caps first, so a refused caller
never makes the upstream create one.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import structlog

from gateway.context import SESSION_STAGE, RequestContext
from gateway.errors import ConcurrencyLimited, InvalidRequest, SessionNotFound, UpstreamProtocolError
from gateway.jsonrpc import Kind
from gateway.sessions import TAKEN, Refusal, SessionBinding, SessionStore, tenant_key

log = structlog.get_logger("gateway.upstream.routing")


SESSION_HEADER = "Mcp-Session-Id"
# longer ids are refused before they are looked up, stored, logged or hashed (upstreams issue UUIDs or similar)
MAX_SESSION_ID_LENGTH = 256
# how long a client refused by a session cap is told to wait (sessions end by DELETE or idle expiry)
SESSION_LIMIT_RETRY_SECONDS = 30.0


def valid_session_id(value: str) -> bool:
    """Visible ASCII (0x21..0x7E, as MCP requires of session ids), at most MAX_SESSION_ID_LENGTH characters."""
    return 0 < len(value) <= MAX_SESSION_ID_LENGTH and value.isascii() and value.isprintable() and " " not in value


def presented_session_id(headers: Mapping[str, str]) -> str | None:
    """The request's `Mcp-Session-Id`, or None. Two of them (a proxy would forward both, a server might read either)
    or a malformed one get 400 before anything looks them up."""
    value = headers.get(SESSION_HEADER)
    if value is None:
        return None
    getall = getattr(headers, "getall", None)
    if getall is not None and len(getall(SESSION_HEADER)) > 1:
        raise InvalidRequest("more than one Mcp-Session-Id header", reason="duplicate_session_id", stage=SESSION_STAGE)
    if not valid_session_id(value):
        raise InvalidRequest(
            f"Mcp-Session-Id must be 1..{MAX_SESSION_ID_LENGTH} visible ASCII characters",
            reason="invalid_session_id",
            stage=SESSION_STAGE,
        )
    return value


def _not_found(ctx: RequestContext, binding: SessionBinding | None) -> SessionNotFound:
    if binding is not None:
        # someone else's session: the same answer as an unknown one, but the audit record says what it was
        ctx.notes["session"] = "foreign"
    return SessionNotFound(
        "unknown or expired session; initialize a new one", reason="session_not_found", stage=SESSION_STAGE
    )


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
        raise _not_found(ctx, binding)
    if not any(u.url == binding.upstream for u in server.upstreams):
        # the instance left the policy: its sessions are gone with it
        await sessions.delete(ctx.server_name, ctx.session_id, binding)
        raise SessionNotFound(
            "session's upstream is gone; initialize a new one", reason="session_upstream_gone", stage=SESSION_STAGE
        )
    ctx.upstream_url = binding.upstream
    ctx.session_binding = binding
    return binding


async def check_presented(ctx: RequestContext, sessions: SessionStore, session_id: str) -> None:
    """On transports that name their session elsewhere (legacy SSE, WebSocket), an `Mcp-Session-Id` header means
    nothing and is never forwarded; it is still checked like any session id, so presenting someone else's is
    refused the same way everywhere."""
    binding = await sessions.get(ctx.server_name, session_id)
    principal = ctx.principal.binding_id if ctx.principal is not None else None
    if binding is None or binding.principal != principal:
        raise _not_found(ctx, binding)


def creates_session(ctx: RequestContext) -> bool:
    """A sessionless `initialize`: the request whose answer issues a session."""
    if ctx.session_id is not None or ctx.http_method != "POST":
        return False
    return any(env.kind is Kind.REQUEST and env.method == "initialize" for env in ctx.envelopes)


def session_limited(ctx: RequestContext, refused: Refusal, sessions: SessionStore) -> ConcurrencyLimited:
    cap = sessions.caps.of(refused)
    ctx.notes["limit"] = refused
    who = "this credential" if refused != "tenant_sessions" else "this tenant"
    return ConcurrencyLimited(
        f"too many open sessions for {who} (cap {cap}); end one (DELETE) or wait for idle ones to expire",
        retry_after=SESSION_LIMIT_RETRY_SECONDS,
        reason="session_limit",
        stage=SESSION_STAGE,
        data={"limit": refused, "cap": cap},
    )


async def reserve_session(ctx: RequestContext, sessions: SessionStore) -> str:
    """Hold a place under the caller's session caps for the session this request will create; its token for
    `after_response` (or `release_session`). 429 `session_limit` when a cap is reached."""
    p = ctx.principal
    assert p is not None
    token = secrets.token_hex(8)
    refused = await sessions.reserve(p.binding_id, tenant_key(p.tenant, ctx.server_name), token)
    if refused is not None:
        raise session_limited(ctx, refused, sessions)
    return token


async def release_session(ctx: RequestContext, sessions: SessionStore, token: str) -> None:
    p = ctx.principal
    assert p is not None
    await sessions.release(p.binding_id, tenant_key(p.tenant, ctx.server_name), token)


async def bind_new_session(
    ctx: RequestContext, sessions: SessionStore, session_id: str, binding: SessionBinding, reservation: str | None
) -> None:
    """Bind a session the upstream just issued to the caller; raise when it cannot be (the answer is refused)."""
    if not valid_session_id(session_id):
        if reservation is not None:
            await release_session(ctx, sessions, reservation)
        raise UpstreamProtocolError("upstream issued an invalid session id", reason="upstream_protocol_error")
    refused = await sessions.put(ctx.server_name, session_id, binding, reservation)
    if refused == TAKEN:
        # an upstream reusing a live session id of another caller: never hand that session over
        log.warning("upstream issued a session id bound to another caller", server=ctx.server_name)
        raise UpstreamProtocolError("upstream issued a session id already in use", reason="upstream_protocol_error")
    if refused is not None:
        raise session_limited(ctx, refused, sessions)


async def after_response(
    ctx: RequestContext,
    sessions: SessionStore,
    status: int,
    new_session: str | None,
    reservation: str | None = None,
) -> None:
    """Record a session the upstream created, forget one it ended or no longer knows."""
    if ctx.session_id is None:
        p = ctx.principal
        if new_session and 200 <= status < 300 and p is not None and ctx.upstream_url is not None:
            binding = SessionBinding(p.binding_id, ctx.server_name, ctx.upstream_url, tenant=p.tenant)
            await bind_new_session(ctx, sessions, new_session, binding, reservation)
        elif reservation is not None:
            await release_session(ctx, sessions, reservation)
        return
    if status == 404 or (ctx.http_method == "DELETE" and 200 <= status < 300):
        known = ctx.session_binding if isinstance(ctx.session_binding, SessionBinding) else None
        await sessions.delete(ctx.server_name, ctx.session_id, known)
