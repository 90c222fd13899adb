"""The baseline: the naive aiohttp pass-through proxy a developer would write in an afternoon.

One aiohttp server, one ClientSession, every request forwarded to the same path on the upstream with its headers
(minus hop-by-hop ones) and its body, and the answer streamed back chunk by chunk. No auth, no limits, no audit,
no metrics. It runs on uvloop like the gateway, so the ratio between the two measures the gateway's work, not the
event loop.

With `--loop-lag-probe S` it also runs the gateway's event-loop lag probe (gateway/looplag.py) and serves its
figures at GET /_looplag/metrics, so the bench reports the same loop stalls for it as for the gateway.

Run: python -m tests.perf.bare_proxy --port N --upstream http://127.0.0.1:M [--loop-lag-probe 0.005]
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


def _add_loop_lag(app: web.Application, interval: float) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from gateway.looplag import LoopLagProbe

    registry = CollectorRegistry()
    probe = LoopLagProbe(registry, interval)

    async def figures(request: web.Request) -> web.Response:
        finished = probe.scrape_started()
        body = generate_latest(registry)
        finished()
        return web.Response(body=body, content_type="text/plain")

    async def running(app: web.Application) -> AsyncIterator[None]:
        probe.start(asyncio.get_running_loop())
        yield
        probe.stop()

    app.cleanup_ctx.append(running)
    app.router.add_get("/_looplag/metrics", figures)


async def serve(port: int, upstream: str, loop_lag_probe: float | None = None) -> None:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(_session_ctx)
    if loop_lag_probe:
        _add_loop_lag(app, loop_lag_probe)
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
    parser.add_argument("--loop-lag-probe", type=float, default=None, help="probe interval (s); off by default")
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.upstream, args.loop_lag_probe))


if __name__ == "__main__":
    main()
