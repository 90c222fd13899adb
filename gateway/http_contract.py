"""The error contract on aiohttp's side of the listener: refusals aiohttp (or HTTP itself) makes are rendered by the
gateway's error renderer and audited, like the chain's.

- A head aiohttp's parser refuses gets 400 (gateway/net/aiohttp_conn.py renders it with `refuse`): among them an
  HTTP/1.1 request without exactly one `Host` (RFC 9112 section 3.2), which the lean server hands over for that.
- aiohttp's own answers from routing and body reading (404 unknown path, 405 wrong method with `Allow`, 413, ...)
  are rendered as JSON-RPC errors and audited instead of aiohttp's plain text.
- A body that came too late (the front door's BodyTimeout) gets 408.
- An answer given before the request's body has fully arrived closes the connection (the body is not read).
- `Expect: 100-continue` is not answered before the request is authenticated: aiohttp's default expect handler
  is replaced on every route, and the interim answer is sent when the body is first read (gateway/net/frontdoor.py
  `send_continue`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.typedefs import Handler, Middleware

from gateway.admin.problem import is_admin_api_path
from gateway.errors import (
    INVALID_REQUEST,
    BodyTooLarge,
    GatewayError,
    MethodNotAllowed,
    NotFound,
)
from gateway.net.frontdoor import BodyTimeout, body_timeout
from gateway.policy.servers import ServerPolicy
from gateway.policy.snapshot import Snapshot
from gateway.policy.store import PolicyStore
from gateway.responder import body_pending
from gateway.transports.common import ContextFactory, refuse_early

# the audit record's `server` for a request to no known route
NO_SERVER = "_http"


def _route(snapshot: Snapshot, path: str) -> tuple[str, ServerPolicy | None]:
    """The policy's server a path names (`/mcp/<name>...`), else NO_SERVER: only names from policy are recorded."""
    if path.startswith("/mcp/"):
        name = path[5:].split("/", 1)[0]
        server = snapshot.servers.get(name)
        if server is not None:
            return name, server
    return NO_SERVER, None


class Refusal:
    """The answer to a refusal made outside the chain, rendered and observed (audit, metrics) like the chain's.
    Built at wiring (gateway/app.py, gateway/server.py for aiohttp's connection handlers)."""

    __slots__ = ("_new_context", "_policy")

    def __init__(self, policy: PolicyStore, new_context: ContextFactory) -> None:
        self._policy = policy
        self._new_context = new_context

    def __call__(self, request: web.BaseRequest, err: GatewayError) -> web.Response:
        active = self._policy.active
        name, server = _route(active.snapshot, request.path)
        transport = "admin" if is_admin_api_path(request.path) else "http"  # admin errors are problem details
        ctx = self._new_context(request, active.snapshot, name, server, transport)
        err.stage = err.stage or "http"
        resp = refuse_early(active.chain, ctx, err)
        if body_pending(request):
            resp.force_close()
        return resp


def error_for(exc: web.HTTPException) -> GatewayError:
    """The gateway's refusal for one of aiohttp's HTTP exceptions (its status and `Allow` kept)."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allow = ", ".join(sorted(exc.allowed_methods))
        return MethodNotAllowed(f"{exc.method} is not allowed here", headers={"Allow": allow})
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("no such route", reason="unknown_route")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return BodyTooLarge("request body too large")
    return GatewayError(exc.reason, reason="http_error", status=exc.status, code=INVALID_REQUEST)


def middleware(refuse: Refusal) -> Middleware:
    @web.middleware
    async def contract(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return refuse(request, error_for(exc))
        except BodyTimeout:
            return refuse(request, body_timeout())
        if not resp.prepared and body_pending(request):
            resp.force_close()  # answered before the body came: it will not be read, the connection ends
        return resp

    return contract


def expect_after_authn(refuse: Refusal) -> Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse | None]]:
    """The expect handler of every route: `100-continue` waits for `send_continue`; any other expectation is
    refused (417), as aiohttp's default handler does."""

    async def expect(request: web.Request) -> web.StreamResponse | None:
        if request.version != HttpVersion11:
            return None
        if request.headers.get("Expect", "").lower() == "100-continue":
            return None
        err = GatewayError("unsupported Expect header", reason="expectation_failed", status=417, code=INVALID_REQUEST)
        return refuse(request, err)

    return expect


# the app's Refusal, for aiohttp's connection handlers (gateway/server.py, gateway/net/aiohttp_conn.py)
HTTP_REFUSAL: web.AppKey[Refusal] = web.AppKey("http_refusal", Refusal)


def install(app: web.Application, refuse: Refusal) -> None:
    app[HTTP_REFUSAL] = refuse
    # first: the outermost middleware sees every answer the others give
    app.middlewares.insert(0, middleware(refuse))
    expect = expect_after_authn(refuse)

    async def defer_continue(app: web.Application) -> None:
        # every route is registered by now (startup); aiohttp has no public setter for a route's expect handler
        for route in app.router.routes():
            route._expect_handler = expect

    app.on_startup.append(defer_continue)
