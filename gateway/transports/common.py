"""What every HTTP transport handler shares: the request context at entry, the body read, the error answer."""

from __future__ import annotations

import itertools
import os
import secrets

from aiohttp import web

from gateway.chain import Chain, note_refusal
from gateway.context import RequestContext
from gateway.errors import BodyTooLarge, GatewayError, render_error
from gateway.h1server import AnyRequest
from gateway.jsonrpc import best_effort_id, parse_message
from gateway.policy.servers import ServerPolicy
from gateway.policy.snapshot import Snapshot
from gateway.runtime import Runtime

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
    """Read the body under `cap`; refuse early on a declared length over it, and stop reading past it."""
    declared = request.content_length
    if declared is not None and declared > cap:
        raise BodyTooLarge(f"request body larger than {cap} bytes", data={"limitBytes": cap})
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


def origin_ok(rt: Runtime, origin: str | None) -> bool:
    return origin is None or origin in rt.allowed_origins


def new_context(
    request: AnyRequest,
    rt: Runtime,
    snapshot: Snapshot,
    server_name: str,
    server: ServerPolicy | None,
    transport: str,
    *,
    session_id: str | None = None,
) -> RequestContext:
    headers = request.headers
    return RequestContext(
        request_id=request_id_of(request),
        snapshot=snapshot,
        server_name=server_name,
        server=server,
        client_ip=rt.client_ip.resolve(request.remote, headers.get("X-Forwarded-For")),
        transport=transport,
        http_method=request.method,
        request=request,
        headers=headers,
        session_id=session_id,
        protocol_version=headers.get("MCP-Protocol-Version"),
    )


async def read_and_parse(ctx: RequestContext, rt: Runtime, protocol_version: str | None) -> None:
    """The `prepare` step of a POST: read under the route's cap, parse the envelope (the original bytes are kept
    for forwarding). On a parse error the id is recovered best-effort so the error can echo it."""
    assert ctx.request is not None and ctx.server is not None
    cap = ctx.server.max_body_bytes or rt.max_body_bytes
    body = await read_body(ctx.request, cap)
    ctx.body = body
    ctx.bytes_in = len(body)
    try:
        ctx.message = parse_message(body, protocol_version)
    except GatewayError:
        ctx.notes["rpc_id"] = best_effort_id(body)
        raise


def render(ctx: RequestContext, server: ServerPolicy | None, err: GatewayError) -> web.Response:
    rpc_id = ctx.rpc_id if ctx.message is not None else ctx.notes.get("rpc_id")
    compat = bool(server and server.compat_status_200 and err.status not in (400, 404, 405, 413))
    resp = render_error(err, rpc_id, request_id=ctx.request_id, extra_headers=ctx.response_headers, status_200=compat)
    ctx.http_status = resp.status
    return resp


def refuse_early(chain: Chain, ctx: RequestContext, err: GatewayError) -> web.Response:
    """A refusal before the chain runs (unknown route, bad Origin): still rendered once and observed."""
    err.stage = err.stage or "route"
    note_refusal(ctx, err)
    resp = render(ctx, ctx.server, err)
    chain.finish(ctx)
    return resp
