"""The audit journal's hook on answers: the pre-record of a request reaches the kernel before its answer's first byte.

Both HTTP servers send the app's `on_response_prepare` signal before they write anything of an answer (aiohttp in
`StreamResponse.prepare`, the lean server in `FastResponse.prepare`, whose head then waits for the first body bytes),
so one hook covers every HTTP answer of an audited request: forwarded calls, refusals, upstream errors, and the 101
of a WebSocket upgrade. The request's context is found through the link the `ContextFactory`
(gateway/transports/common.py) leaves on the request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.responder import answers_itself

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiohttp import web

    from gateway.audit.journal import AuditJournal
    from gateway.context import RequestContext
    from gateway.responder import AnyRequest

_KEY = "mgw.audit_ctx"


def link_context(request: AnyRequest, ctx: RequestContext) -> None:
    # strong (a refusal is written after its handler returned, when nothing else holds the context), and taken
    # back by the answer's hook: the context holds the request, so a link left in place would be a reference
    # cycle, and every request with its body would live until the cyclic GC ran (tests/security/test_bounds.py
    # saw ~1 GB). Only a request that ends without any answer (the client left) leaves the cycle to the GC.
    if answers_itself(request):
        request.audit_ctx = ctx
    else:
        request[_KEY] = ctx  # type: ignore[index]  # narrowed to aiohttp's request, which TypeGuard cannot say


def take_context(request: Any) -> RequestContext | None:
    """The request's context, unlinked."""
    if answers_itself(request):
        ctx: RequestContext | None = request.audit_ctx
        request.audit_ctx = None
        return ctx
    pop = getattr(request, "pop", None)
    return pop(_KEY, None) if pop is not None else None


def answer_hook(journal: AuditJournal) -> Callable[[Any, web.StreamResponse], Awaitable[None]]:
    note, flush = journal.note, journal.flush

    async def on_prepare(request: Any, response: web.StreamResponse) -> None:
        ctx = take_context(request)
        if ctx is not None:
            note(ctx, response.status)
        # synchronous, in the prepare step: the answer's first write comes after it
        flush()

    return on_prepare
