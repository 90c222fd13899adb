"""An SDK-built (FastMCP, streamable HTTP) upstream that records the headers of every request it receives, so
tests can assert at the upstream what the gateway forwarded (and what it did not: the client's credentials).

- every HTTP request appends `{"path", "method", "headers": {lower-case name: value}}` to `--record` (JSONL);
- tools: `echo(text)` (annotated read-only), `add(a, b)`, `secret_admin_tool()` (the one policy hides).

    python -m tests.upstreams.header_recorder --port N --record /tmp/headers.jsonl [--json-response]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server.fastmcp import FastMCP
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations


class RecordHeaders:
    """ASGI middleware: one JSON line per HTTP request, written before the request is handled."""

    def __init__(self, app: Any, path: Path) -> None:
        self._app = app
        self._path = path

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            line = json.dumps({"path": scope["path"], "method": scope["method"], "headers": headers})
            with self._path.open("a") as fh:
                fh.write(line + "\n")
        await self._app(scope, receive, send)


def build(port: int, json_response: bool) -> FastMCP:
    mcp = FastMCP(
        "header-recorder",
        host="127.0.0.1",
        port=port,
        json_response=json_response,
        log_level="WARNING",
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[f"127.0.0.1:{port}", "127.0.0.1"],
            allowed_origins=[],
        ),
    )

    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--json-response", action="store_true")
    args = parser.parse_args()
    mcp = build(args.port, args.json_response)
    app = RecordHeaders(mcp.streamable_http_app(), Path(args.record))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
