"""A connection that carried a request with a Transfer-Encoding body is closed after its answer.

aiohttp 3.14's C parser keeps the last trailer field of a chunked request and adds it to the headers of the next
request on the same connection (`on_message_begin` does not reset the pending field). Behind a front proxy that
reuses connections, one client's `Authorization` trailer then authenticates the next client's request. Closing the
connection after any such request means no later request is ever parsed by that parser: a client or proxy opens a
new connection, as it must after `Connection: close`. Chunked requests are rare for MCP clients (the SDKs send
Content-Length), so the cost is one reconnect for those. tests/security/test_framing.py shows the refusal.

The request is marked as the client's own `Connection: close` would mark it (the parsed message's `should_close`,
an aiohttp internal: the aiohttp minor version is pinned for such uses), so every answer, streamed or not, says
`Connection: close` and aiohttp closes the connection after it. The lean server never parses chunked requests: it
hands those connections to aiohttp.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def close_after_transfer_encoding(request: web.Request, handler: Handler) -> web.StreamResponse:
    if "Transfer-Encoding" in request.headers:
        message = request._message
        if not message.should_close:
            request._message = message._replace(should_close=True)
    return await handler(request)


def install(app: web.Application) -> None:
    app.middlewares.append(close_after_transfer_encoding)
