"""The baseline: the naive aiohttp pass-through proxy a developer would write in an afternoon.

One aiohttp server, one ClientSession, every request forwarded to the same path on the upstream with its headers
(minus hop-by-hop ones) and its body, and the answer streamed back chunk by chunk. No auth, no limits, no audit,
no metrics. It runs on uvloop like the gateway, so the ratio between the two measures the gateway's work, not the
event loop.

Run: python -m tests.perf.bare_proxy --port N --upstream http://127.0.0.1:M
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer", "host", "content-length"}
)
UPSTREAM: web.AppKey[str] = web.AppKey("upstream", str)
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)


async def proxy(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSION]
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
    body = await request.read() if request.can_read_body else None
    async with session.request(
        request.method, request.app[UPSTREAM] + request.rel_url.path, headers=headers, data=body
    ) as up:
        out = web.StreamResponse(
            status=up.status, headers={k: v for k, v in up.headers.items() if k.lower() not in _HOP}
        )
        await out.prepare(request)
        async for chunk in up.content.iter_any():
            await out.write(chunk)
        await out.write_eof()
        return out


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    # no total timeout (SSE streams are long) and no connection limit (idle streams each hold one)
    app[SESSION] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False
    )
    yield
    await app[SESSION].close()


async def serve(port: int, upstream: str) -> None:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(_session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="origin of the upstream, e.g. http://127.0.0.1:9000")
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
