"""A stdio server behind a WebSocket client: the process (or a channel of the shared one) in the shape of the upstream
socket the WebSocket transport relays to (gateway/transports/websocket.py: `send_str`, `close`, async iteration of
messages), so every frame still runs authz, limits and the breaker, is audited and has its tools lists filtered.

One client socket is one session: a per_session server starts its process at the upgrade (under the caps) and
stops it when the socket closes; a shared server's socket is a channel of the shared process (its `initialize` is
answered from the gateway's own handshake). Everything the process sends for the channel (answers, progress,
server-to-client requests, notifications) goes to the socket in order; a process that exits closes the socket with
1011 after the errors of what was in flight.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import WSMessage, WSMsgType

from gateway.upstream.stdio.manager import StdioManager, Worker
from gateway.upstream.stdio.mux import Channel, Exchange, JsonObj

# requests that would change a shared process's state for every client on it (as on Streamable HTTP)
SHARED_REFUSED = frozenset({"logging/setLevel", "resources/subscribe", "resources/unsubscribe"})
EXITED_CLOSE = 1011


class StdioSocket:
    def __init__(self, manager: StdioManager, worker: Worker, channel: Channel, owns_process: bool) -> None:
        self._manager = manager
        self._worker = worker
        self._channel = channel
        self._owns = owns_process
        worker.mux.channels.add(channel)
        stream = channel.open_stream()
        assert stream is not None  # a new channel has none
        self._stream: Exchange = stream
        self.closed = False
        self.close_code: int | None = None

    async def send_str(self, text: str) -> None:
        """One client frame to the process; ConnectionResetError when the process is gone."""
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            return  # the transport parsed it already; nothing unparsable gets here
        items = parsed if isinstance(parsed, list) else [parsed]
        await send_to_stream(self._worker, self._channel, self._stream, [m for m in items if isinstance(m, dict)])

    def __aiter__(self) -> AsyncIterator[WSMessage]:
        return self

    async def __anext__(self) -> WSMessage:
        if self.closed:
            raise StopAsyncIteration
        msg = await self._stream.next()
        if msg is None:
            if self.closed:
                raise StopAsyncIteration
            # the process went away: the client learns it from the close code
            self.close_code = EXITED_CLOSE
            return WSMessage(WSMsgType.CLOSE, EXITED_CLOSE, "stdio server process exited")
        return WSMessage(WSMsgType.TEXT, orjson.dumps(msg).decode(), None)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        if self.closed:
            return False
        self.closed = True
        self.close_code = self.close_code or code
        stream = self._stream
        stream.close()
        worker = self._worker
        for cancel in worker.mux.cancel_exchange(stream, "the client went away"):
            self._manager.fire(worker.send(cancel))
        worker.mux.channels.discard(self._channel)
        self._channel.close()
        if self._owns:
            self._manager.stop_worker(worker)
        return True


async def send_to_stream(worker: Worker, channel: Channel, stream: Exchange, messages: list[JsonObj]) -> None:
    """Client messages to the process for a session whose answers all go to one stream (a WebSocket, a legacy
    HTTP+SSE stream). A shared process's `initialize` is answered from the gateway's own handshake."""
    mux = worker.mux
    for msg in messages:
        if "method" in msg and "id" in msg:
            method = msg["method"]
            if mux.shared and method == "initialize":
                stream.put({"jsonrpc": "2.0", "id": msg["id"], "result": worker.init_result})
                continue
            if mux.shared and method in SHARED_REFUSED:
                stream.put(_error(msg["id"], f"{method} is not served by a shared process"))
                continue
            out: JsonObj | None = mux.outgoing_request(channel, stream, msg)
        elif "method" in msg:
            out = mux.outgoing_notification(channel, msg)
        else:
            out = mux.outgoing_response(channel, msg)
        if out is not None:
            await worker.send(out)


def _error(rpc_id: Any, message: str) -> JsonObj:
    return {"jsonrpc": "2.0", "id": rpc_id, "error": {"code": -32601, "message": message}}
