"""JSON-RPC over one stdio process, shared by one or more client sessions ("channels").

Every request the gateway writes to the process gets an id of the gateway's own (a counter per process), and its
progress token (if any) becomes that same id: two clients of a shared process may both send id 1 and progress
token "t", and neither sees the other's answer or progress. A client's `notifications/cancelled` names its own id and
is rewritten to the gateway's; an id the client does not have in flight is dropped there, so a client can cancel
only its own requests.

Messages the process sends on its own are routed like a Streamable HTTP server would send them:

* an answer goes to the POST (the "exchange") that carried its request, with the client's id restored;
* `notifications/progress` goes to the exchange whose request carried the token;
* a server-to-client request (sampling, elicitation, roots, ping) or another notification, on a per-session
  process: to the one POST in flight when there is exactly one (it is most likely what caused it), otherwise the
  session's GET stream, otherwise the newest POST in flight; with none of these it waits (bounded) for the GET
  stream. On a shared process nothing can tell which client a server-to-client request is for: it is answered
  with an error at once, and of the other notifications only `list_changed` ones go out, to every session.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from gateway.errors import UPSTREAM_TIMEOUT, UPSTREAM_UNAVAILABLE

log = structlog.get_logger("gateway.upstream.stdio")

JsonObj = dict[str, Any]

# messages held for a session's GET stream while it is not open (the first ones a client may miss otherwise); the
# oldest go first past this many or past the route's max_queued_bytes
MAX_BACKLOG = 64
# messages queued for one exchange or stream whose client reads slower than the server writes. Past this many, or
# past the route's `stdio.max_queued_bytes`, the client is cut off (its answer or stream ends, its requests are
# cancelled at the process) instead of the gateway's memory growing: a server writing 16 MiB lines to a client that
# never reads held 385 MB when only the count was bounded (red team).
MAX_QUEUED = 4096
# the default of `stdio.max_queued_bytes`
DEFAULT_QUEUED_BYTES = 32 * 1024 * 1024
# what a message counts when its size on the wire is not known (the gateway's own answers and errors: small)
OWN_MESSAGE_BYTES = 256
LIST_CHANGED = frozenset(
    {
        "notifications/tools/list_changed",
        "notifications/resources/list_changed",
        "notifications/prompts/list_changed",
    }
)
# JSON-RPC "method not found": what a shared process's server-to-client request gets from the gateway
METHOD_NOT_FOUND = -32601


def id_key(rpc_id: object) -> str:
    """Ids compare as strings, as the SDKs route them (`1` and `"1"` are one id)."""
    return str(rpc_id)


class Exchange:
    """The messages for one POST (or one GET stream): answers and what is routed to it, in order."""

    __slots__ = (
        "_sizes",
        "_wake",
        "closed",
        "failure",
        "limit",
        "on_overflow",
        "outstanding",
        "overflowed",
        "queue",
        "queued_bytes",
        "stream",
    )

    def __init__(self, stream: bool = False, limit: int = DEFAULT_QUEUED_BYTES) -> None:
        self.queue: deque[JsonObj] = deque()
        self._sizes: deque[int] = deque()
        self.queued_bytes = 0
        self.limit = limit
        # the client was cut off for not reading (never the server's failure); on_overflow is called once then
        self.overflowed = False
        self.on_overflow: Callable[[], None] | None = None
        # gateway ids of this POST's requests still unanswered
        self.outstanding: set[int] = set()
        self.stream = stream  # a GET stream: never done by itself
        self.closed = False
        # set when the process went away: why (its answers are the gateway's errors)
        self.failure: str | None = None
        self._wake = asyncio.Event()

    def put(self, msg: JsonObj, size: int = OWN_MESSAGE_BYTES) -> None:
        """Queue a message of `size` bytes on the wire; a client this far behind is cut off."""
        if self.closed:
            return
        if len(self.queue) >= MAX_QUEUED or self.queued_bytes + size > self.limit:
            self.overflowed = True
            self.queue.clear()
            self._sizes.clear()
            self.queued_bytes = 0
            self.close()
            if self.on_overflow is not None:
                self.on_overflow()
            return
        self.queue.append(msg)
        self._sizes.append(size)
        self.queued_bytes += size
        self._wake.set()

    @property
    def done(self) -> bool:
        return not self.stream and not self.outstanding and not self.queue

    def close(self) -> None:
        """The client is gone: nothing more is queued, a waiting reader ends."""
        self.closed = True
        self._wake.set()

    def finish(self) -> None:
        """End a GET stream (the session or process is gone)."""
        self.stream = False
        self._wake.set()

    async def next(self) -> JsonObj | None:
        """The next message, or None when the exchange is done. Cancellation-safe: nothing is lost when the wait
        is cancelled (the relay's keep-alive timer does that)."""
        while not self.queue:
            if self.done or self.closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        self.queued_bytes -= self._sizes.popleft()
        return self.queue.popleft()


class Channel:
    """One client session's side of a process."""

    def __init__(self, session_id: str | None, limit: int = DEFAULT_QUEUED_BYTES) -> None:
        self.session_id = session_id
        # max_queued_bytes of the route: for every exchange and stream of this channel, and for the backlog
        self.limit = limit
        self.exchanges: list[Exchange] = []
        self.stream: Exchange | None = None
        self.backlog: deque[tuple[JsonObj, int]] = deque()
        self._backlog_bytes = 0
        # client id (as a string) -> the gateway id of its request in flight
        self.ids: dict[str, int] = {}
        # server-to-client requests sent to this client, not yet answered: id key -> where they went
        self.server_requests: dict[str, Exchange | None] = {}
        self.closed = False

    def open_stream(self) -> Exchange | None:
        """The session's GET stream, or None when one is open already (a client holds one at a time)."""
        if self.stream is not None and not self.stream.closed:
            return None
        stream = self.stream = Exchange(stream=True, limit=self.limit)
        while self.backlog:
            msg, size = self.backlog.popleft()
            stream.put(msg, size)
        self._backlog_bytes = 0
        return stream

    def exchange(self) -> Exchange:
        """A new POST's exchange, with this channel's limit."""
        exchange = Exchange(limit=self.limit)
        self.exchanges.append(exchange)
        return exchange

    def _hold(self, msg: JsonObj, size: int) -> None:
        self.backlog.append((msg, size))
        self._backlog_bytes += size
        while len(self.backlog) > MAX_BACKLOG or self._backlog_bytes > self.limit:
            self._backlog_bytes -= self.backlog.popleft()[1]

    def deliver(self, msg: JsonObj, size: int = OWN_MESSAGE_BYTES) -> Exchange | None:
        """Route a message the process sent on its own; where it went (None: held for the GET stream)."""
        posts = [e for e in self.exchanges if not e.closed]
        stream = self.stream if self.stream is not None and not self.stream.closed else None
        target: Exchange | None
        if len(posts) == 1:
            target = posts[0]
        elif stream is not None:
            target = stream
        elif posts:
            target = posts[-1]
        else:
            target = None
        if target is None:
            self._hold(msg, size)
        else:
            target.put(msg, size)
        return target

    def close(self, failure: str | None = None) -> None:
        self.closed = True
        for exchange in self.exchanges:
            if failure is not None:
                exchange.failure = failure
        if self.stream is not None:
            self.stream.finish()


class Mux:
    """The JSON-RPC state of one process: the gateway's ids, the progress tokens, the channels on it."""

    def __init__(self, shared: bool) -> None:
        self.shared = shared
        self._ids = itertools.count(1)
        # gateway id -> (channel, the client's id, exchange)
        self._pending: dict[int, tuple[Channel, Any, Exchange]] = {}
        # gateway progress token (= gateway id) -> the client's token
        self._tokens: dict[int, Any] = {}
        # the gateway's own requests (initialize of a shared process, health pings)
        self._internal: dict[int, asyncio.Future[JsonObj]] = {}
        self.channels: set[Channel] = set()
        self.failure: str | None = None

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ client -> process

    def outgoing_request(self, channel: Channel, exchange: Exchange, msg: JsonObj) -> JsonObj:
        """The request as the process gets it (gateway id and token), registered for its answer."""
        gid = next(self._ids)
        client_id = msg.get("id")
        self._pending[gid] = (channel, client_id, exchange)
        channel.ids[id_key(client_id)] = gid
        exchange.outstanding.add(gid)
        out = dict(msg)
        out["id"] = gid
        params = msg.get("params")
        if isinstance(params, dict):
            meta = params.get("_meta")
            if isinstance(meta, dict) and "progressToken" in meta:
                self._tokens[gid] = meta["progressToken"]
                out["params"] = {**params, "_meta": {**meta, "progressToken": gid}}
        return out

    def outgoing_notification(self, channel: Channel, msg: JsonObj) -> JsonObj | None:
        """The notification as the process gets it, or None when it must not reach the process."""
        method = msg.get("method")
        params = msg.get("params")
        if method == "notifications/cancelled":
            if not isinstance(params, dict):
                return None
            gid = channel.ids.get(id_key(params.get("requestId")))
            if gid is None:
                return None  # not this client's request in flight
            self._drop(gid)
            return {**msg, "params": {**params, "requestId": gid}}
        if self.shared and method in ("notifications/initialized", "notifications/roots/list_changed"):
            # the gateway initialized a shared process itself; a client's roots are not the process's
            return None
        return msg

    def outgoing_response(self, channel: Channel, msg: JsonObj) -> JsonObj | None:
        """A client's answer to a server-to-client request: only to one that was sent to this client."""
        key = id_key(msg.get("id"))
        if key not in channel.server_requests:
            return None
        del channel.server_requests[key]
        return msg

    def cancel_exchange(self, exchange: Exchange, reason: str) -> list[JsonObj]:
        """Forget the exchange's unanswered requests; the `notifications/cancelled` to send the process for them."""
        out: list[JsonObj] = []
        for gid in list(exchange.outstanding):
            self._drop(gid)
            out.append(
                {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": gid, "reason": reason}}
            )
        return out

    def expire(self, exchange: Exchange) -> tuple[list[JsonObj], list[JsonObj]]:
        """The exchange's unanswered requests timed out: the gateway's errors for the client (the client's ids)
        and the `notifications/cancelled` for the process."""
        errors: list[JsonObj] = []
        for gid in exchange.outstanding:
            entry = self._pending.get(gid)
            if entry is not None:
                errors.append(
                    {
                        "jsonrpc": "2.0",
                        "id": entry[1],
                        "error": {
                            "code": UPSTREAM_TIMEOUT,
                            "message": "the stdio server did not answer in time",
                            "data": {"reason": "upstream_timeout"},
                        },
                    }
                )
        return errors, self.cancel_exchange(exchange, "the gateway's idle timeout")

    def _drop(self, gid: int) -> None:
        entry = self._pending.pop(gid, None)
        self._tokens.pop(gid, None)
        if entry is None:
            return
        channel, client_id, exchange = entry
        channel.ids.pop(id_key(client_id), None)
        exchange.outstanding.discard(gid)
        exchange._wake.set()

    def internal_request(self, method: str, params: JsonObj | None = None) -> tuple[JsonObj, asyncio.Future[JsonObj]]:
        gid = next(self._ids)
        fut: asyncio.Future[JsonObj] = asyncio.get_running_loop().create_future()
        self._internal[gid] = fut
        msg: JsonObj = {"jsonrpc": "2.0", "id": gid, "method": method}
        if params is not None:
            msg["params"] = params
        return msg, fut

    def forget_internal(self, fut: asyncio.Future[JsonObj]) -> None:
        for gid, f in list(self._internal.items()):
            if f is fut:
                del self._internal[gid]

    # ------------------------------------------------------------------ process -> clients

    def incoming(self, msg: object, size: int = OWN_MESSAGE_BYTES) -> list[JsonObj]:
        """Route one message from the process (`size`: its line's bytes); what the gateway must write back to it
        (its own answers)."""
        if isinstance(msg, list):
            replies: list[JsonObj] = []
            share = size // max(len(msg), 1)
            for item in msg:
                replies.extend(self.incoming(item, share))
            return replies
        if not isinstance(msg, dict):
            return []
        if "method" not in msg:
            if "result" in msg or "error" in msg:
                self._answer(msg, size)
            return []
        if "id" in msg:
            return self._server_request(msg, size)
        self._notification(msg, size)
        return []

    def _answer(self, msg: JsonObj, size: int) -> None:
        gid = msg.get("id")
        if not isinstance(gid, int):
            return
        fut = self._internal.pop(gid, None)
        if fut is not None:
            if not fut.done():
                fut.set_result(msg)
            return
        entry = self._pending.pop(gid, None)
        if entry is None:
            return  # answered after a cancel, or an id the gateway never sent
        self._tokens.pop(gid, None)
        channel, client_id, exchange = entry
        channel.ids.pop(id_key(client_id), None)
        exchange.outstanding.discard(gid)
        exchange.put({**msg, "id": client_id}, size)

    def _server_request(self, msg: JsonObj, size: int) -> list[JsonObj]:
        if self.shared or not self.channels:
            if msg.get("method") == "ping":
                return [{"jsonrpc": "2.0", "id": msg["id"], "result": {}}]
            return [
                {
                    "jsonrpc": "2.0",
                    "id": msg["id"],
                    "error": {
                        "code": METHOD_NOT_FOUND,
                        "message": "the gateway cannot send server-to-client requests from a shared stdio process",
                    },
                }
            ]
        channel = next(iter(self.channels))
        channel.server_requests[id_key(msg["id"])] = channel.deliver(msg, size)
        if len(channel.server_requests) > MAX_QUEUED:
            channel.server_requests.pop(next(iter(channel.server_requests)))
        return []

    def _notification(self, msg: JsonObj, size: int) -> None:
        method = msg.get("method")
        params = msg.get("params")
        if method == "notifications/progress" and isinstance(params, dict):
            token = params.get("progressToken")
            if isinstance(token, int) and token in self._tokens:
                entry = self._pending.get(token)
                if entry is not None:
                    entry[2].put({**msg, "params": {**params, "progressToken": self._tokens[token]}}, size)
            return
        if self.shared:
            if method in LIST_CHANGED:
                for channel in self.channels:
                    if channel.stream is not None and not channel.stream.closed:
                        channel.stream.put(msg, size)
            return
        if not self.channels:
            return
        channel = next(iter(self.channels))
        if method == "notifications/cancelled" and isinstance(params, dict):
            # the server cancels its own request to the client: it goes where that request went
            where = channel.server_requests.pop(id_key(params.get("requestId")), None)
            if where is not None and not where.closed:
                where.put(msg, size)
                return
        channel.deliver(msg, size)

    # ------------------------------------------------------------------ the process went away

    def fail(self, reason: str, message: str) -> None:
        """Answer everything in flight with the gateway's error and end every stream."""
        self.failure = reason
        for gid, (channel, client_id, exchange) in list(self._pending.items()):
            exchange.failure = reason
            exchange.outstanding.discard(gid)
            channel.ids.pop(id_key(client_id), None)
            exchange.put(
                {
                    "jsonrpc": "2.0",
                    "id": client_id,
                    "error": {"code": UPSTREAM_UNAVAILABLE, "message": message, "data": {"reason": reason}},
                }
            )
        self._pending.clear()
        self._tokens.clear()
        for fut in self._internal.values():
            if not fut.done():
                fut.set_exception(ConnectionResetError(message))
        self._internal.clear()
        for channel in self.channels:
            channel.close(reason)
