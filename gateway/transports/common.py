"""What every HTTP transport handler shares: the request context at entry, the body read, the error answer."""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway import protocol_era
from gateway.admin.problem import render_problem
from gateway.audit.answers import link_context
from gateway.chain import Chain, note_refusal
from gateway.clientip import ClientIpResolver, forwarded_for
from gateway.context import RequestContext
from gateway.errors import BodyTooLarge, GatewayError, render_error
from gateway.jsonrpc import best_effort_id, parse_message
from gateway.net.frontdoor import BodyTimeout, body_timeout, send_continue
from gateway.policy.servers import ServerPolicy
from gateway.policy.snapshot import Snapshot
from gateway.responder import AnyRequest, body_pending
from gateway.transports.refusal_status import status_200

_MAX_REQUEST_ID = 128


def request_id_of(request: AnyRequest) -> str:
    rid = request.headers.get("X-Request-ID")
    if rid and len(rid) <= _MAX_REQUEST_ID and rid.isascii() and rid.isprintable():
        return rid
    return _next_request_id()


class _RequestIds:
    """A random per-process prefix plus a counter: unique across processes and restarts like a uuid4, at a
    fraction of its cost (uuid4 reads os.urandom on every request)."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"  # 32 hex digits, the shape of a uuid4 hex


_IDS = _RequestIds()
# a forked child must not repeat its parent's ids
os.register_at_fork(after_in_child=_IDS.reseed)
_next_request_id = _IDS.next


async def read_body(request: AnyRequest, cap: int) -> bytes:
    """Read the body under `cap`; refuse early on a declared length over it, and stop reading past it. A body too
    slow for the front door's deadline (gateway/net/frontdoor.py) is refused with 408."""
    declared = request.content_length
    if declared is not None and declared > cap:
        raise BodyTooLarge(f"request body larger than {cap} bytes", data={"limitBytes": cap})
    if isinstance(request, web.BaseRequest) and "Expect" in request.headers:
        await send_continue(request)  # the request got past authentication: the client may send its body now
    try:
        return await _read_capped(request, cap)
    except BodyTimeout:
        raise body_timeout() from None


async def _read_capped(request: AnyRequest, cap: int) -> bytes:
    content = request.content
    first = await content.readany()
    if len(first) > cap:
        raise BodyTooLarge(f"request body larger than {cap} bytes", data={"limitBytes": cap})
    chunk = await content.readany() if first else first
    if not chunk:
        # the whole body in one chunk (the usual JSON-RPC message): no accumulation buffer and no copies
        return first if type(first) is bytes else bytes(first)
    buf = bytearray(first)
    while chunk:
        buf += chunk
        if len(buf) > cap:
            raise BodyTooLarge(f"request body larger than {cap} bytes", data={"limitBytes": cap})
        chunk = await content.readany()
    return bytes(buf)


# a body still arriving up to this size is read before the credentials are checked (bounded by the front door's
# body deadline), so that a refusal can echo the request's JSON-RPC id and its audit record can name the method
EARLY_READ_BYTES = 64 * 1024


def authn_before_body(request: AnyRequest, server: ServerPolicy | None, max_body_bytes: int) -> bool:
    """Whether a POST's credentials are checked before its body is read (issue #14): when reading it would mean
    waiting for a large body (or one of unknown size), or for one the client sends only once told to (`Expect:
    100-continue`, answered only after authentication). A body already here, a small one, or one whose declared
    length is over the cap (refused without reading) is read first."""
    if not body_pending(request):
        return False
    cap = (server.max_body_bytes if server is not None else None) or max_body_bytes
    declared = request.content_length
    if declared is not None and declared > cap:
        return False
    if declared is None or declared > EARLY_READ_BYTES:
        return True
    return isinstance(request, web.BaseRequest) and "Expect" in request.headers


class ContextFactory:
    """Builds the `RequestContext` of every request a transport (or an early refusal) handles: its id, the client
    address (gateway/clientip.py) and, when the audit journal wants each answer's context (gateway/audit/answers.py),
    the link from the request to it. Without a journal no request is linked: the link is a reference cycle (the
    context holds the request) that would be left to the cyclic GC."""

    __slots__ = ("_client_ip", "_link_answers")

    def __init__(self, client_ip: ClientIpResolver, *, link_answers: bool) -> None:
        self._client_ip = client_ip
        self._link_answers = link_answers

    def __call__(
        self,
        request: AnyRequest,
        snapshot: Snapshot,
        server_name: str,
        server: ServerPolicy | None,
        transport: str,
        *,
        session_id: str | None = None,
    ) -> RequestContext:
        headers = request.headers
        ctx = RequestContext(
            request_id=request_id_of(request),
            snapshot=snapshot,
            server_name=server_name,
            server=server,
            client_ip=self._client_ip.resolve(request.remote, forwarded_for(headers)),
            transport=transport,
            http_method=request.method,
            request=request,
            headers=headers,
            session_id=session_id,
            protocol_version=headers.get("MCP-Protocol-Version"),
        )
        if self._link_answers:
            link_context(request, ctx)
        return ctx


async def read_and_parse(ctx: RequestContext, max_body_bytes: int, protocol_version: str | None) -> None:
    """The `prepare` step of a POST: read under the route's cap, parse the envelope (the original bytes are kept
    for forwarding). On a parse error the id is recovered best-effort so the error can echo it."""
    assert ctx.request is not None
    # an unknown route (server None) reads like a route with default settings
    cap = (ctx.server.max_body_bytes if ctx.server is not None else None) or max_body_bytes
    body = await read_body(ctx.request, cap)
    ctx.body = body
    ctx.bytes_in = len(body)
    try:
        ctx.message = parse_message(body, protocol_version)
    except GatewayError:
        ctx.notes["rpc_id"] = best_effort_id(body)
        raise


def default_route_prepare(max_body_bytes: int) -> Callable[[RequestContext], Awaitable[None]]:
    """The `prepare` of a POST to a route that will not serve it (unknown, or a method another transport's route
    refuses): the body is read and checked as a route with default settings would, before authentication, so the
    answer (a parse error, the echoed id) does not depend on which route it was."""

    async def prepare(ctx: RequestContext) -> None:
        await read_and_parse(ctx, max_body_bytes, ctx.protocol_version)
        protocol_era.classify(ctx, "both")

    return prepare


def render(ctx: RequestContext, server: ServerPolicy | None, err: GatewayError) -> web.Response:
    if ctx.transport == "admin":
        # the admin API is a REST API: problem details, not a JSON-RPC envelope (gateway/admin/problem.py)
        resp = render_problem(err, request_id=ctx.request_id, extra_headers=ctx.response_headers)
        ctx.http_status = resp.status
        return resp
    rpc_id = ctx.rpc_id if ctx.message is not None else ctx.notes.get("rpc_id")
    compat = status_200(ctx, server, err)
    resp = render_error(err, rpc_id, request_id=ctx.request_id, extra_headers=ctx.response_headers, status_200=compat)
    ctx.http_status = resp.status
    return resp


# what decides whether a caller may use a route at all: what a route the caller cannot use runs before its answer
ROUTE_STAGES: tuple[str, ...] = ("client_guard", "authn", "authz")


async def refuse_unusable_route(
    chain: Chain,
    ctx: RequestContext,
    err: GatewayError,
    prepare: Callable[[RequestContext], Awaitable[None]] | None = None,
    authn_first: bool = False,
) -> web.Response:
    """A route this caller cannot use, answered only after the stages a real route runs first: an anonymous
    caller gets the same 401 whether the route exists or not, and authz answers a server of another tenant with
    the same 404 as a server that does not exist (gateway/filters/authz.py), so neither can be used to find
    routes. `err` is the answer for a caller authz lets through (its own route, which does not serve this path)."""
    err.stage = err.stage or "route"

    async def answer(_: RequestContext) -> web.Response:
        raise err

    try:
        return await chain.run(ctx, answer, prepare=prepare, stages=ROUTE_STAGES, authn_first=authn_first)
    except GatewayError as refused:
        return render(ctx, ctx.server, refused)


def refuse_early(chain: Chain, ctx: RequestContext, err: GatewayError) -> web.Response:
    """A refusal before the chain runs (bad Host or Origin, a route's method): still rendered once and observed."""
    err.stage = err.stage or "route"
    note_refusal(ctx, err)
    # observed before rendering, as chain.run does: the audit record and metrics keep the refusal's own status
    # even when `compat_status_200` sends 200 on the wire (red team: they recorded 200 here)
    chain.finish(ctx)
    return render(ctx, ctx.server, err)
