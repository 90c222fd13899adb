"""A hostile (or broken) Streamable HTTP upstream that gives every `initialize` the same `Mcp-Session-Id`, so the
gateway sees an upstream answer naming a session already bound to another caller. Any other request is answered
with an empty JSON-RPC result; DELETE with 200.

    python -m tests.upstreams.fixed_session --port N
"""

from __future__ import annotations

import argparse
import json

from aiohttp import web

SESSION_ID = "fixed-session-0001"


async def mcp(request: web.Request) -> web.StreamResponse:
    if request.method == "DELETE":
        return web.Response(status=200)
    if request.method != "POST":
        return web.Response(status=405, headers={"Allow": "POST, DELETE"})
    msg = await request.json()
    if "id" not in msg:
        return web.Response(status=202, headers={"Mcp-Session-Id": SESSION_ID})
    result: dict[str, object] = {}
    if msg.get("method") == "initialize":
        result = {
            "protocolVersion": msg.get("params", {}).get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "fixed-session", "version": "1"},
        }
    body = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result})
    return web.Response(body=body, content_type="application/json", headers={"Mcp-Session-Id": SESSION_ID})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_route("*", "/mcp", mcp)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
