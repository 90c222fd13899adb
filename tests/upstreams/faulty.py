"""An SDK-built MCP upstream (FastMCP, streamable HTTP) whose failure mode a test switches at run time.

    python -m tests.upstreams.faulty --port N

    POST /control?mode=ok|hang|status|reset|slow[&status=500][&delay=1.5]   switch behaviour (answers JSON state)
    GET  /stats                                                              {"connections", "requests", "mode"}

Modes, applied to every request except /control and /stats:
    ok      the SDK answers normally
    hang    never answers (the request waits until the client gives up)
    status  answers `status` (default 500) with a JSON-RPC error body
    reset   aborts the TCP connection with RST as soon as request bytes arrive (SO_LINGER 0)
    slow    waits `delay` seconds, then lets the SDK answer

`connections` counts TCP connections accepted by the listening socket, `requests` the MCP requests that reached
the server (in any mode): the tests use them to prove that an open breaker makes no connection attempt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

import uvicorn
from mcp.server.fastmcp import FastMCP
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

CONTROL_PATHS = ("/control", "/stats")


@dataclass
class FaultState:
    mode: str = "ok"
    status: int = 500
    delay: float = 1.0
    connections: int = 0
    requests: int = 0

    def view(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "status": self.status,
            "delay": self.delay,
            "connections": self.connections,
            "requests": self.requests,
            "pid": os.getpid(),
        }


def counting_protocol(state: FaultState) -> type[H11Protocol]:
    class CountingProtocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            state.connections += 1
            super().connection_made(transport)

        def data_received(self, data: bytes) -> None:
            if state.mode == "reset" and not data.startswith((b"POST /control", b"GET /stats")):
                state.requests += 1
                sock = self.transport.get_extra_info("socket")
                if sock is not None:
                    # linger 0: close() sends RST instead of FIN, so the client sees ECONNRESET
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.transport.abort()
                return
            super().data_received(data)

    return CountingProtocol


class FaultMiddleware:
    def __init__(self, app: Any, state: FaultState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in CONTROL_PATHS:
            await self.app(scope, receive, send)
            return
        st = self.state
        st.requests += 1
        if st.mode == "hang":
            await asyncio.Event().wait()
        if st.mode == "status":
            body = json.dumps(
                {"jsonrpc": "2.0", "id": None, "error": {"code": -32603, "message": f"injected {st.status}"}}
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": st.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if st.mode == "slow":
            await asyncio.sleep(st.delay)
        await self.app(scope, receive, send)


def build(port: int, state: FaultState) -> Any:
    mcp = FastMCP(
        "faulty",
        host="127.0.0.1",
        port=port,
        log_level="WARNING",
        json_response=True,
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[f"127.0.0.1:{port}", "127.0.0.1"],
            allowed_origins=[],
        ),
    )

    @mcp.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @mcp.tool()
    def whoami() -> str:
        """Which upstream process answered."""
        return json.dumps({"pid": os.getpid(), "port": port})

    @mcp.custom_route("/control", methods=["POST"])
    async def control(request: Request) -> JSONResponse:
        q = request.query_params
        if "mode" in q:
            state.mode = q["mode"]
        if "status" in q:
            state.status = int(q["status"])
        if "delay" in q:
            state.delay = float(q["delay"])
        return JSONResponse(state.view())

    @mcp.custom_route("/stats", methods=["GET"])
    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(state.view())

    return FaultMiddleware(mcp.streamable_http_app(), state)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", default="ok")
    args = parser.parse_args()
    state = FaultState(mode=args.mode)
    app = build(args.port, state)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=args.port, http=counting_protocol(state), log_level="warning", lifespan="on"
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
