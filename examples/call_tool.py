"""Call a tool through the gateway with the official MCP Python SDK (the README quick start).

.venv/bin/python examples/call_tool.py                  # /mcp/example, the HTTP upstream
.venv/bin/python examples/call_tool.py example-stdio    # /mcp/example-stdio, a stdio process the gateway runs
"""

import asyncio
import sys

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

GATEWAY = "http://127.0.0.1:8080/mcp/"
DEMO_KEY = "mgw_demo_devOnlyDemoSecret0123456789"  # development-only demo credential (policies/keys.yaml)


async def main(server: str) -> None:
    async with (
        httpx.AsyncClient(headers={"Authorization": f"Bearer {DEMO_KEY}"}, timeout=30) as http,
        streamable_http_client(GATEWAY + server, http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = await session.list_tools()
        print("tools:", [t.name for t in tools.tools])
        result = await session.call_tool("add", {"a": 2, "b": 40})
        print("add(2, 40) =", result.content[0].text)  # type: ignore[union-attr]


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "example"))
