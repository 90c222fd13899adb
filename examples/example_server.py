"""An example upstream MCP server built with the official `mcp` SDK (FastMCP).

`make run` starts it on 127.0.0.1:9001 and the gateway routes `/mcp/example` to it; the gateway also runs it as a
stdio process per session for `/mcp/example-stdio` (policies/servers.yaml). The e2e tests use it too: tools
(including one that reports progress and one that asks the client a question), resources and prompts.

    python -m examples.example_server --port 9001 [--transport streamable-http|sse|stdio] [--json-response]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

from mcp.server.fastmcp import Context, FastMCP
from mcp.server.streamable_http import EventStore
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel


def build_server(host: str, port: int, json_response: bool = False, event_store: EventStore | None = None) -> FastMCP:
    mcp = FastMCP(
        "example",
        instructions="Example upstream behind the MCP gateway.",
        host=host,
        port=port,
        json_response=json_response,
        # with an event store, streams can be resumed with Last-Event-ID
        event_store=event_store,
        log_level="WARNING",
        # The gateway connects from loopback with the upstream's own Host header; keep the SDK's protection on
        # for any other host.
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[f"127.0.0.1:{port}", f"localhost:{port}", "127.0.0.1", "localhost"],
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
        """A tool policy can hide from tenants (used by the access tests)."""
        return "admin only"

    @mcp.tool()
    async def count(n: int, delay: float, ctx: Context) -> str:  # type: ignore[type-arg]
        """Count to n, reporting progress after each step, `delay` seconds apart."""
        for i in range(1, n + 1):
            await ctx.report_progress(i, n, f"step {i}")
            await asyncio.sleep(delay)
        return f"counted to {n}"

    class Confirm(BaseModel):
        confirmed: bool

    @mcp.tool()
    async def confirm_action(action: str, ctx: Context) -> str:  # type: ignore[type-arg]
        """Ask the client to confirm (elicitation: a server-to-client request)."""
        result = await ctx.elicit(f"Confirm {action}?", Confirm)
        if result.action == "accept" and result.data is not None:
            return f"{action}: {'confirmed' if result.data.confirmed else 'declined'}"
        return f"{action}: {result.action}"

    @mcp.tool()
    def whoami() -> str:
        """What this upstream instance is (for routing tests)."""
        return json.dumps({"pid": os.getpid(), "port": port})

    @mcp.resource("example://greeting")
    def greeting() -> str:
        """A static greeting."""
        return "hello from the example server"

    @mcp.resource("example://items/{item_id}")
    def item(item_id: str) -> str:
        """One item by id."""
        return json.dumps({"id": item_id})

    @mcp.prompt()
    def review(code: str) -> str:
        """Ask for a code review."""
        return f"Please review this code:\n\n{code}"

    return mcp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--transport", choices=["streamable-http", "sse", "stdio"], default="streamable-http")
    parser.add_argument("--json-response", action="store_true")
    args = parser.parse_args()
    server = build_server(args.host, args.port, json_response=args.json_response)
    server.run(transport=args.transport)


if __name__ == "__main__":
    main()
