"""SDK WebSocket upstream: the example server's tools over `mcp.server.websocket.websocket_server` at `/ws`, plus
`/raw`, a bare socket for close-code tests (a notification `test/close` with `params.code` makes it close with that
code; GET `/closes` lists the close codes clients sent it; GET `/stats` counts the WebSocket connections that reached
this process on any route).

    python -m tests.upstreams.ws_server --port N
"""

from __future__ import annotations

import argparse
import json
import warnings
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from examples.example_server import build_server

warnings.filterwarnings("ignore", category=DeprecationWarning)

from mcp.server.websocket import websocket_server  # noqa: E402


def build(port: int) -> Starlette:
    fast = build_server("127.0.0.1", port)
    lowlevel = fast._mcp_server
    closes: list[dict[str, Any]] = []
    stats = {"connections": 0}

    async def mcp_ws(websocket: WebSocket) -> None:
        stats["connections"] += 1
        async with websocket_server(websocket.scope, websocket.receive, websocket.send) as (read, write):
            await lowlevel.run(read, write, lowlevel.create_initialization_options())

    async def raw_ws(websocket: WebSocket) -> None:
        stats["connections"] += 1
        await websocket.accept(subprotocol="mcp" if "mcp" in websocket.scope.get("subprotocols", []) else None)
        closes.append({"event": "open", "authorization": websocket.headers.get("authorization")})
        try:
            while True:
                text = await websocket.receive_text()
                msg = json.loads(text)
                if msg.get("method") == "test/close":
                    await websocket.close(code=int(msg["params"]["code"]), reason="asked to")
                    return
                await websocket.send_text(text)  # echo anything else
        except WebSocketDisconnect as exc:
            closes.append({"event": "close", "code": exc.code})

    async def list_closes(request: Request) -> JSONResponse:
        return JSONResponse(closes)

    async def show_stats(request: Request) -> JSONResponse:
        return JSONResponse(stats)

    return Starlette(
        routes=[
            WebSocketRoute("/ws", mcp_ws),
            WebSocketRoute("/raw", raw_ws),
            Route("/closes", list_closes),
            Route("/stats", show_stats),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build(args.port), host="127.0.0.1", port=args.port, log_level="warning", ws="websockets-sansio")


if __name__ == "__main__":
    main()
