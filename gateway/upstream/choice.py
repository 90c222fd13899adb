"""`UpstreamChoice`: the one step that chooses which upstream instance serves a request.

Every decision about the instance is made here, at the moment of the request that needs it:

1. `prefetch` (the ratelimit stage, Redis only): starts the session lookup early, so that it leaves in the same write
   as the limiter's script (one Redis round trip per request instead of two). It decides nothing.
2. `choose` (the breaker stage, first): the session's own instance, checked against the caller
   (`bound_session`, gateway/upstream/routing.py), or the balancer's pick for a sessionless request. The answer is
   kept in `ctx.upstream_url`; asking again (the transport's forward step does) returns it without choosing anew.
3. `another`: a different instance for a sessionless request, when the chosen one cannot take it: its breaker
   refuses (the breaker stage, gateway/filters/breaker.py) or an attempt failed and may be retried (the forwarder,
   gateway/upstream/resilient.py). Raises GatewayError when no instance can; a session never changes instance.
4. `begin`: counts the request as outstanding on the instance it goes to (least-outstanding balancing); returns
   the function that ends the count.

Built once per gateway (gateway/resilience/factory.py) over the session store and the balancer. Callers keep its
bound methods, and `begin` is the balancer's own, so going through this class adds no call per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from gateway.context import RequestContext
from gateway.policy.servers import ServerPolicy
from gateway.sessions import SessionStore
from gateway.upstream.balancer import Balancer
from gateway.upstream.routing import bound_session


class UpstreamChoice:
    __slots__ = ("_balancer", "_pick", "begin", "sessions")

    def __init__(self, sessions: SessionStore, balancer: Balancer) -> None:
        self.sessions = sessions
        self._balancer = balancer
        self._pick = balancer.pick
        self.begin: Callable[[str, str], Callable[[], None]] = balancer.begin

    async def choose(self, ctx: RequestContext) -> str:
        """Set and return `ctx.upstream_url`. Idempotent: a request already given an instance keeps it."""
        if ctx.upstream_url is not None:
            return ctx.upstream_url
        server = ctx.server
        assert server is not None
        if ctx.session_id is not None:
            return (await bound_session(ctx, self.sessions)).upstream
        ctx.upstream_url = self._pick(ctx, server)
        return ctx.upstream_url

    def prefetch(self, ctx: RequestContext) -> None:
        """Start the request's session lookup before the limiter's script is sent: both commands leave in the same
        write on the Redis hot-path connection and come back in one read, instead of two round trips one after the
        other (`choose` finishes the lookup). Streamable HTTP only: other transports bind their session once per
        stream or socket, not per message."""
        if (
            ctx.transport != "streamable-http"
            or ctx.session_binding is not None
            or ctx.session_prefetch is not None
            or ctx.session_id is None
        ):
            return
        ctx.session_prefetch = self.sessions.prefetch(ctx.server_name, ctx.session_id)

    def another(self, name: str, server: ServerPolicy, exclude: Iterable[str]) -> str:
        """An instance of `server` other than those in `exclude`, by the balancer's rule; GatewayError if none."""
        return self._balancer.choose(name, server, exclude=tuple(exclude))
