"""A stdio MCP server built with the official `mcp` SDK (FastMCP), for `transport: stdio` routes.

Tools: echo, add, count (progress), confirm_action (elicitation), slow (sleeps; writes `cancelled <id>` to the file
named by $STDIO_EVENTS when the gateway cancels it), crash (the process exits mid-call), environ (its argv and
environment, to show what reached them), whoami (its pid), stubborn (from then on the process ignores SIGTERM and
outlives its stdin: only SIGKILL ends it), shout (writes lines to stderr), flood (large progress messages, as fast
as it can). Writes one line to stderr at start.

    python -m tests.upstreams.stdio_server [--name NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time

from mcp.server.fastmcp import Context, FastMCP
from pydantic import BaseModel


def _event(line: str) -> None:
    path = os.environ.get("STDIO_EVENTS")
    if path:
        with open(path, "a") as fh:
            fh.write(line + "\n")


def build(name: str) -> FastMCP:
    mcp = FastMCP(name, log_level="WARNING")

    @mcp.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @mcp.tool()
    async def count(n: int, delay: float, ctx: Context) -> str:  # type: ignore[type-arg]
        """Count to n, reporting progress after each step."""
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
    async def slow(seconds: float, tag: str, ctx: Context) -> str:  # type: ignore[type-arg]
        """Report progress once, then sleep; a cancellation is written to $STDIO_EVENTS."""
        _event(f"started {tag} {os.getpid()}")
        await ctx.report_progress(0, 1, "sleeping")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            _event(f"cancelled {tag} {os.getpid()}")
            raise
        return f"slept {seconds}"

    @mcp.tool()
    async def crash(ctx: Context) -> str:  # type: ignore[type-arg]
        """Exit the process in the middle of the call."""
        await ctx.report_progress(0, 1, "about to crash")
        await asyncio.sleep(0.2)
        os._exit(3)

    @mcp.tool()
    def environ() -> str:
        """This process's argv, environment and working directory."""
        return json.dumps({"argv": sys.argv, "env": dict(os.environ), "cwd": os.getcwd()})

    @mcp.tool()
    def stubborn() -> str:
        """Ignore SIGTERM and keep the process alive after stdin closes (a thread that never ends)."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        threading.Thread(target=lambda: time.sleep(3600), daemon=False).start()
        return "stubborn"

    @mcp.tool()
    def shout(lines: int, size: int) -> str:
        """Write `lines` lines of `size` characters to stderr."""
        for i in range(lines):
            sys.stderr.write(f"shout {i} " + "x" * size + "\n")
        sys.stderr.flush()
        return "shouted"

    @mcp.tool()
    async def flood(n: int, size: int, ctx: Context) -> str:  # type: ignore[type-arg]
        """Report progress n times, each with a message of `size` characters: a server outrunning its client."""
        text = "x" * size
        try:
            for i in range(1, n + 1):
                await ctx.report_progress(i, n, text)
                await asyncio.sleep(0)  # a cancellation can land between two messages
        except asyncio.CancelledError:
            _event(f"cancelled flood after {i}")
            raise
        _event(f"flooded {n}")
        return f"flooded {n}"

    @mcp.tool()
    def whoami() -> str:
        """This process's pid."""
        return json.dumps({"pid": os.getpid()})

    return mcp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="stdio-example")
    args = parser.parse_args()
    print(f"stdio server {args.name} starting, pid {os.getpid()}", file=sys.stderr, flush=True)
    build(args.name).run(transport="stdio")


if __name__ == "__main__":
    main()
