"""An SDK-built MCP upstream that records everything the gateway sends it, on any of the three transports, so the
security tests can assert at the upstream what crossed the gateway (and what never did: a client credential, a
smuggled request).

Every HTTP request appends `{"kind": "http", "n", "method", "path", "query", "headers"}` to `--record` (JSONL) before
it is handled, and each body chunk `{"kind": "body", "n", "body"}` as it is read; a WebSocket handshake appends
`{"kind": "ws", ...}` with the same fields and each received text frame `{"kind": "frame", "n", "text"}`. Header
names are lower-case; bytes are decoded as latin-1, so nothing is lost.

    python -m tests.security.recording_upstream --port N --record FILE [--transport streamable-http|sse|websocket]
        [--json-response] [--set-cookie]

Paths: `/mcp` (Streamable HTTP), `/sse` + `/messages/` (legacy HTTP+SSE), `/ws` (WebSocket, subprotocol `mcp`).
Tools: `echo(text)`, `add(a, b)`, `secret_admin_tool()`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import warnings
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server.fastmcp import FastMCP
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

warnings.filterwarnings("ignore", category=DeprecationWarning)

from mcp.server.websocket import websocket_server  # noqa: E402


class Record:
    """ASGI middleware: one JSON line per request and per body chunk or frame, appended as they happen."""

    def __init__(self, app: Any, path: Path, set_cookie: bool = False) -> None:
        self._app = app
        self._path = path
        self._ids = itertools.count(1)
        self._set_cookie = set_cookie

    def _write(self, entry: dict[str, Any]) -> None:
        with self._path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        n = next(self._ids)
        self._write(
            {
                "kind": "http" if scope["type"] == "http" else "ws",
                "n": n,
                "method": scope.get("method", "GET"),
                "path": scope["path"],
                "query": scope.get("query_string", b"").decode("latin-1"),
                "headers": {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
            }
        )

        async def recording_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request" and message.get("body"):
                self._write({"kind": "body", "n": n, "body": message["body"].decode("latin-1")})
            elif message["type"] == "websocket.receive":
                text = message.get("text") or (message.get("bytes") or b"").decode("latin-1")
                self._write({"kind": "frame", "n": n, "text": text})
            return message

        async def cookie_send(message: Any) -> None:
            # every answer's head sets a cookie: a gateway that kept it would send it on other callers' requests
            if message["type"] in ("http.response.start", "websocket.accept"):
                headers = list(message.get("headers", []))
                headers.append((b"set-cookie", f"upstream_sid=for-request-{n}; Path=/".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self._app(scope, recording_receive, cookie_send if self._set_cookie else send)


def build(port: int, json_response: bool) -> FastMCP:
    mcp = FastMCP(
        "recording-upstream",
        host="127.0.0.1",
        port=port,
        json_response=json_response,
        log_level="WARNING",
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}"],
            allowed_origins=[],
        ),
    )

    @mcp.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @mcp.tool()
    def secret_admin_tool() -> str:
        """A tool policy hides from tenants."""
        return "admin only"

    return mcp


def websocket_app(mcp: FastMCP) -> Starlette:
    lowlevel = mcp._mcp_server

    async def mcp_ws(websocket: WebSocket) -> None:
        async with websocket_server(websocket.scope, websocket.receive, websocket.send) as (read, write):
            await lowlevel.run(read, write, lowlevel.create_initialization_options())

    return Starlette(routes=[WebSocketRoute("/ws", mcp_ws)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--transport", choices=["streamable-http", "sse", "websocket"], default="streamable-http")
    parser.add_argument("--json-response", action="store_true")
    parser.add_argument("--set-cookie", action="store_true", help="a Set-Cookie header on every answer")
    args = parser.parse_args()
    mcp = build(args.port, args.json_response)
    if args.transport == "streamable-http":
        inner: Any = mcp.streamable_http_app()
    elif args.transport == "sse":
        inner = mcp.sse_app()
    else:
        inner = websocket_app(mcp)
    app = Record(inner, Path(args.record), args.set_cookie)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", ws="websockets-sansio", lifespan="on")


if __name__ == "__main__":
    main()
