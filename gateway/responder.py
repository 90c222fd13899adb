"""What the core knows of a request and of how its answer is written, whichever HTTP server the request came from.

Two servers hand requests to the transports: aiohttp's (`web.BaseRequest`) and the lean server of
gateway/net/h1server.py, whose requests write their own answers (`OwnResponder`). The core (transports, the forwarder,
the HTTP contract, the audit journal's hook) imports this module and never a server module, so a server can be
replaced, or switched off (`http.fast_path: false`), without touching it. The lean server's `FastRequest` has this
shape; nothing here imports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol, TypeGuard, cast

from aiohttp import web
from multidict import CIMultiDictProxy


class PendingBody(Protocol):
    """The body of a request that may still be arriving when its handler starts."""

    @property
    def pending(self) -> bool: ...

    async def readany(self) -> bytes: ...


class OwnResponder(Protocol):
    """A request whose server writes its own answers: the subset of `web.BaseRequest` the core reads, plus
    `new_response`. `audit_ctx` holds the request's context for the audit journal until its answer is prepared."""

    audit_ctx: Any

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def match_info(self) -> Mapping[str, str]: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def content(self) -> PendingBody: ...

    @property
    def remote(self) -> str | None: ...

    @property
    def scheme(self) -> str: ...

    @property
    def transport(self) -> asyncio.Transport | None: ...

    def new_response(self, status: int, reason: str | None, headers: Mapping[str, str]) -> web.StreamResponse: ...


# what a transport handler may be given
AnyRequest = web.BaseRequest | OwnResponder


def answers_itself(request: AnyRequest) -> TypeGuard[OwnResponder]:
    """True for a request whose server writes its own answers (not aiohttp's)."""
    return not isinstance(request, web.BaseRequest)


def body_pending(request: AnyRequest) -> bool:
    """True while the request's body has not fully arrived (it is then not waited for before authentication)."""
    if isinstance(request, web.BaseRequest):
        return not request.content.is_eof()
    return request.content.pending


def new_response(
    request: AnyRequest, status: int, reason: str | None, headers: Mapping[str, str]
) -> web.StreamResponse:
    """A streamed answer for this request, written by the server the request came from."""
    if isinstance(request, web.BaseRequest):
        return web.StreamResponse(status=status, reason=reason, headers=headers)
    return request.new_response(status, reason, headers)


async def prepare(out: web.StreamResponse, request: AnyRequest) -> None:
    """`out.prepare(request)` for either server's request: an own responder's answer takes its own request."""
    await out.prepare(cast(web.BaseRequest, request))
