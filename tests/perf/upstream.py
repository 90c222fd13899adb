"""The benchmark's fast upstream: a minimal MCP-over-HTTP server that is never the bottleneck.

POST /mcp and /tick: JSON-RPC (`initialize` issues an `Mcp-Session-Id`; `tools/call` answers a small JSON result
with the same id; notifications get 202). GET /mcp: an idle SSE stream (headers only, then silence: what an idle
MCP client stream looks like). GET /tick: an SSE stream of `--tick-count` events, one every `--tick-interval`
seconds, each carrying the nanosecond wall-clock time it was written, so a reader on the same machine measures
relay latency as (read time - event time).

Run: python -m tests.perf.upstream --port N
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid

import orjson
from aiohttp import web

PROTOCOL_VERSION = "2025-06-18"
_TOOL_RESULT = {"content": [{"type": "text", "text": "ok"}], "isError": False}
_INIT_RESULT = {
    "protocolVersion": PROTOCOL_VERSION,
    "capabilities": {"tools": {"listChanged": False}},
    "serverInfo": {"name": "bench-upstream", "version": "1"},
}
_TOOLS = {"tools": [{"name": "echo", "description": "returns ok", "inputSchema": {"type": "object"}}]}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}

TICK_INTERVAL: web.AppKey[float] = web.AppKey("tick_interval", float)
TICK_COUNT: web.AppKey[int] = web.AppKey("tick_count", int)


def _answer(msg: dict[str, object]) -> dict[str, object] | None:
    method = msg.get("method")
    if "id" not in msg:
        return None  # a notification (or a response to us): nothing to answer
    if method == "tools/call":
        result: object = _TOOL_RESULT
    elif method == "initialize":
        result = _INIT_RESULT
    elif method == "tools/list":
        result = _TOOLS
    else:
        result = {}
    return {"jsonrpc": "2.0", "id": msg["id"], "result": result}


async def post_rpc(request: web.Request) -> web.Response:
    try:
        msg = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.Response(status=400)
    if not isinstance(msg, dict):
        return web.Response(status=400)
    answer = _answer(msg)
    if answer is None:
        return web.Response(status=202)
    headers = {"Content-Type": "application/json"}
    if msg.get("method") == "initialize":
        headers["Mcp-Session-Id"] = uuid.uuid4().hex
    return web.Response(body=orjson.dumps(answer), headers=headers)


async def idle_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers=_SSE_HEADERS)
    await resp.prepare(request)
    # silence until the client goes away (handler_cancellation ends this wait)
    await asyncio.Event().wait()
    return resp


async def tick_stream(request: web.Request) -> web.StreamResponse:
    interval = request.app[TICK_INTERVAL]
    count = request.app[TICK_COUNT]
    resp = web.StreamResponse(headers=_SSE_HEADERS)
    await resp.prepare(request)
    for seq in range(count):
        await asyncio.sleep(interval)
        body = (
            b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":{"seq":%d,"ts":%d}}}'
            % (seq, time.time_ns())
        )
        await resp.write(b"id: %d\ndata: %s\n\n" % (seq, body))
    await resp.write_eof()
    return resp


async def delete_session(request: web.Request) -> web.Response:
    return web.Response(status=200)


def build_app(tick_interval: float, tick_count: int) -> web.Application:
    app = web.Application()
    app[TICK_INTERVAL] = tick_interval
    app[TICK_COUNT] = tick_count
    app.router.add_post("/mcp", post_rpc)
    app.router.add_get("/mcp", idle_stream)
    app.router.add_delete("/mcp", delete_session)
    app.router.add_post("/tick", post_rpc)
    app.router.add_get("/tick", tick_stream)
    return app


async def serve(port: int, tick_interval: float, tick_count: int) -> None:
    runner = web.AppRunner(build_app(tick_interval, tick_count), access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tick-interval", type=float, default=0.005)
    parser.add_argument("--tick-count", type=int, default=200)
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.tick_interval, args.tick_count))


if __name__ == "__main__":
    main()
