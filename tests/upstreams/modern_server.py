"""A minimal MCP 2026-07-28 (stateless) upstream in aiohttp, for what the v1 SDK cannot serve: POST-only,
per-request `_meta`, 405 on GET/DELETE, and cancellation by disconnect. It records what it saw:

- `tools/call` `echo_headers` answers (JSON) with the Mcp-* and MCP-Protocol-Version headers it received;
- `tools/call` `slow` answers with an SSE stream: one progress notification, then silence; when the client side
  of that stream goes away the handler is cancelled and the time is recorded;
- GET `/events` lists the records (`{"event": "started"|"cancelled", "t": <unix time>}`).

    python -m tests.upstreams.modern_server --port N
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from aiohttp import web

EVENTS: web.AppKey[list[dict[str, Any]]] = web.AppKey("events", list)


def _result(rpc_id: Any, result: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "result": {"resultType": "complete", **result}}


async def mcp(request: web.Request) -> web.StreamResponse:
    if request.method != "POST":
        return web.json_response(
            {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "POST only"}},
            status=405,
            headers={"Allow": "POST"},
        )
    msg = await request.json()
    if "id" not in msg:
        return web.Response(status=202)
    name = (msg.get("params") or {}).get("name")
    if msg.get("method") == "tools/call" and name == "echo_headers":
        seen = {k: v for k, v in request.headers.items() if k.lower().startswith("mcp-")}
        text = json.dumps(seen, sort_keys=True)
        return web.json_response(_result(msg["id"], {"content": [{"type": "text", "text": text}]}))
    if msg.get("method") == "tools/call" and name == "slow":
        events = request.app[EVENTS]
        events.append({"event": "started", "t": time.time()})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        note = {
            "jsonrpc": "2.0",
            "method": "notifications/progress",
            "params": {"progressToken": msg["id"], "progress": 1, "total": 2},
        }
        await resp.write(f"event: message\ndata: {json.dumps(note)}\n\n".encode())
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            events.append({"event": "cancelled", "t": time.time()})
            raise
        await resp.write(f"event: message\ndata: {json.dumps(_result(msg['id'], {'content': []}))}\n\n".encode())
        return resp
    return web.json_response(
        {"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "Method not found"}}, status=404
    )


async def events(request: web.Request) -> web.Response:
    return web.json_response(request.app[EVENTS])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app[EVENTS] = []
    app.router.add_route("*", "/mcp", mcp)
    app.router.add_get("/events", events)
    # handler_cancellation: a client that goes away cancels the handler, which is how a 2026 server sees it
    web.run_app(app, host="127.0.0.1", port=args.port, handler_cancellation=True, print=None)


if __name__ == "__main__":
    main()
