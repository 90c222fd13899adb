"""An upstream built with the official `mcp` SDK whose tools ask the client something on the session's standalone
GET stream, not on the stream of the `tools/call` that caused it (as the conformance suite's reference server does
for its sampling and elicitation scenarios).

The SDK routes a server-to-client request without a related request id to the GET stream; when no GET stream is open
at that moment the request is not delivered (it is only kept in an event store for a `Last-Event-ID` replay, and
this server keeps none). So a `tools/call` completes only when the session's GET stream reached the server before
the call asked its question: exactly the ordering a client that opens its GET stream first relies on (issue 16).

    python -m tests.upstreams.get_stream_requests --port N
"""

from __future__ import annotations

import argparse

from mcp import types
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.transport_security import TransportSecuritySettings


def build_server(port: int) -> FastMCP:
    mcp = FastMCP(
        "get-stream-requests",
        host="127.0.0.1",
        port=port,
        log_level="WARNING",
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )

    @mcp.tool()
    async def sample(prompt: str, ctx: Context) -> str:  # type: ignore[type-arg]
        """Ask the client's model (sampling/createMessage) on the GET stream; return its answer."""
        result = await ctx.session.create_message(
            [types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))],
            max_tokens=16,
            related_request_id=None,  # not the call's own stream: the standalone GET stream
        )
        content = result.content
        return content.text if isinstance(content, types.TextContent) else ""

    @mcp.tool()
    async def confirm(action: str, ctx: Context) -> str:  # type: ignore[type-arg]
        """Ask the client to confirm (elicitation/create) on the GET stream; return its answer."""
        result = await ctx.session.elicit_form(
            f"Confirm {action}?",
            {"type": "object", "properties": {"confirmed": {"type": "boolean"}}, "required": ["confirmed"]},
            related_request_id=None,
        )
        confirmed = bool(result.content and result.content.get("confirmed"))
        return f"{action}: {result.action} {confirmed}"

    return mcp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    build_server(args.port).run(transport="streamable-http")


if __name__ == "__main__":
    main()
