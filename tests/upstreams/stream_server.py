"""SDK (FastMCP) streamable-HTTP upstream for stream-robustness tests: resumable streams (in-memory event store),
a tool returning a large deterministic text (one huge SSE `data:` line) and a tool that stays silent.

    python -m tests.upstreams.stream_server --port N
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools

from mcp.server.fastmcp import Context, FastMCP
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import JSONRPCMessage


class MemoryEventStore(EventStore):
    """Every event of every stream, in order; replay sends the events of the same stream after the given id."""

    def __init__(self) -> None:
        self._events: list[tuple[StreamId, EventId, JSONRPCMessage | None]] = []
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = f"{stream_id}-{next(self._ids)}"
        self._events.append((stream_id, event_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        found = None
        for stream_id, event_id, _ in self._events:
            if event_id == last_event_id:
                found = stream_id
                break
        if found is None:
            return None
        after = False
        for stream_id, event_id, message in list(self._events):
            if event_id == last_event_id:
                after = True
                continue
            if after and stream_id == found and message is not None:
                await send_callback(EventMessage(message, event_id))
        return found


def blob_text(size: int) -> str:
    """Deterministic, incompressible-looking ASCII of exactly `size` characters."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "big")).hexdigest().encode()
        counter += 1
    return out[:size].decode()


def build(port: int) -> FastMCP:
    mcp = FastMCP(
        "stream",
        host="127.0.0.1",
        port=port,
        log_level="WARNING",
        event_store=MemoryEventStore(),
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[f"127.0.0.1:{port}", "127.0.0.1"],
            allowed_origins=[],
        ),
    )

    @mcp.tool()
    def blob(size: int) -> str:
        """`size` characters of deterministic text."""
        return blob_text(size)

    @mcp.tool()
    async def silent(seconds: float) -> str:
        """Say nothing for `seconds`, then answer."""
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    @mcp.tool()
    async def steps(n: int, delay: float, ctx: Context) -> str:  # type: ignore[type-arg]
        """Log a message per step (each a separate event on the response stream), `delay` seconds apart."""
        for i in range(1, n + 1):
            await ctx.info(f"step {i}")
            await asyncio.sleep(delay)
        return f"done {n}"

    return mcp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    build(args.port).run(transport="streamable-http")


if __name__ == "__main__":
    main()
