"""The forward step of a `transport: stdio` route: a Streamable HTTP request (either protocol era) becomes JSON-RPC
on a stdio process, and the process's messages become the HTTP answer.

It has the shape of the HTTP forwarder's `open()` and returns an `UpstreamResponse`, so everything around the forward
step is the same as for an HTTP upstream: the chain, the session binding to its principal (the session id is the
gateway's own, issued on `initialize`), the caps, list filtering, keep-alives, audit and metrics. The upstream
outcome it reports feeds the route's breaker: a process that cannot be started counts as `connect`, one that exits
before answering as `reset`, no answer before `timeouts.first_byte` as `timeout`.

* POST `initialize`: per_session starts the session's process and passes the client's `initialize`; shared answers
  from the shared process's own handshake (the gateway's). The session id is the gateway's.
* POST with `Mcp-Session-Id`: to the session's process (shared: ids and progress tokens remapped).
* POST in 2026-07-28 (no session): per_session runs a process for this request only (initialized by the gateway,
  stopped after the answer); shared sends it to the shared process.
* GET with `Mcp-Session-Id`: the session's stream of server messages (one at a time: a second gets 409).
* DELETE: ends the session (and its per-session process).

An answer is JSON when the first message for the POST is its answer, and an event stream when progress or a
server-to-client request comes first (as an SDK server does). A client that goes away while its request is
unanswered makes the gateway send `notifications/cancelled` for it to the process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
import structlog

from gateway.audit.record import hash_session
from gateway.context import FORWARD_STAGE, RequestContext, UpstreamOutcome
from gateway.errors import GatewayError, UpstreamTimeout, UpstreamUnavailable
from gateway.policy.servers import ServerPolicy
from gateway.policy.stdio import StdioPolicy
from gateway.ratelimit.shares import ANONYMOUS_TENANT
from gateway.upstream.response import UpstreamResponse
from gateway.upstream.stdio.manager import Owner, StdioManager, Worker, initialize
from gateway.upstream.stdio.mux import Channel, Exchange, JsonObj
from gateway.upstream.stdio.process import SpawnFailed
from gateway.upstream.stdio.response import StdioResponse
from gateway.upstream.stdio.socket import SHARED_REFUSED, StdioSocket, send_to_stream

log = structlog.get_logger("gateway.upstream.stdio")

SESSION_HEADER = "Mcp-Session-Id"
# what a legacy stream's `endpoint` event names, relative to the route (gateway/upstream/stdio/legacy.py)
LEGACY_ENDPOINT = "/messages/?session_id="
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601


class _Failed(Exception):
    """No answer came: the outcome kind for the breaker and the error for the client."""

    def __init__(self, kind: str, error: GatewayError) -> None:
        super().__init__(error.message)
        self.kind = kind
        self.error = error


def _error(rpc_id: Any, code: int, message: str) -> JsonObj:
    return {"jsonrpc": "2.0", "id": rpc_id, "error": {"code": code, "message": message}}


def _process_exited() -> _Failed:
    return _Failed(
        "reset",
        UpstreamUnavailable(
            "the stdio server process exited before it answered; start a new session",
            reason="upstream_process_exited",
            stage=FORWARD_STAGE,
        ),
    )


class StdioForwarder:
    def __init__(self, manager: StdioManager) -> None:
        self.manager = manager

    async def open(
        self,
        ctx: RequestContext,
        server: ServerPolicy,
        url: str,
        method: str,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> UpstreamResponse:
        """The answer's status and headers, like HttpForwarder.open (extra_headers: none apply to a process)."""
        policy = server.stdio
        assert policy is not None
        ctx.notes["upstream_transport"] = "stdio"
        start = time.perf_counter()
        try:
            resp = await self._open(ctx, server, policy, method)
        except _Failed as failed:
            latency = time.perf_counter() - start
            ctx.upstream_latency = latency
            ctx.report_outcome(UpstreamOutcome(url, None, failed.kind, latency))
            raise failed.error from None
        except GatewayError:
            # the gateway's own caps (processes, backoff): never the server's failure, as with a pool's cap
            ctx.report_outcome(UpstreamOutcome(url, None, "pool", time.perf_counter() - start))
            raise
        latency = time.perf_counter() - start
        ctx.upstream_latency = latency
        ctx.upstream_status = resp.status
        if method == "POST" and resp.headers.get("Content-Type") == "text/event-stream":
            # the answer is still to come: the breaker learns whether it came when the stream ends (a process that
            # exits or goes silent mid-answer counts as a failure, as before its first message)
            def ended(kind: str | None) -> None:
                status = None if kind is not None else resp.status
                ctx.report_outcome(UpstreamOutcome(url, status, kind, latency))

            resp.on_end = ended
        else:
            ctx.report_outcome(UpstreamOutcome(url, resp.status, None, latency))
        return resp

    async def _open(self, ctx: RequestContext, server: ServerPolicy, policy: StdioPolicy, method: str) -> StdioResponse:
        manager = self.manager
        sid = ctx.session_id
        if ctx.transport == "sse":
            return await self._legacy(ctx, policy, method)
        if method == "DELETE":
            if sid is None or not manager.end_session(ctx.server_name, sid):
                return _unknown_session()
            return StdioResponse.json(200, None)
        if method == "GET":
            return self._stream(ctx, sid)
        messages = _messages(ctx.body)
        if sid is not None:
            sess = manager.session(ctx.server_name, sid)
            if sess is None:
                return _unknown_session()
            sess.touch()
            if not sess.owns_process:
                # a shared process restarted after a crash carries on with the sessions of the one before
                manager.rebind(sess, await self._shared(ctx, policy))
            try:
                return await self._dispatch(ctx, server, sess.worker, sess.channel, messages)
            finally:
                sess.touch()
        if ctx.notes.get("era") == "modern":
            return await self._stateless(ctx, server, policy, messages)
        if len(messages) == 1 and messages[0].get("method") == "initialize" and "id" in messages[0]:
            return await self._initialize(ctx, server, policy, messages[0])
        return StdioResponse.json(
            400, _error(ctx.rpc_id, INVALID_REQUEST, "Bad Request: no Mcp-Session-Id; send initialize first")
        )

    async def connect(self, ctx: RequestContext, server: ServerPolicy, url: str) -> StdioSocket:
        """A WebSocket client's session: its process (per_session) or a channel of the shared one, in the shape of
        an upstream socket (gateway/upstream/stdio/socket.py)."""
        policy = server.stdio
        assert policy is not None
        ctx.notes["upstream_transport"] = "stdio"
        start = time.perf_counter()
        try:
            if policy.process == "shared":
                worker, owns = await self._shared(ctx, policy), False
            else:
                worker, owns = await self._spawn(ctx, policy, f"socket:{ctx.request_id}"), True
        except _Failed as failed:
            ctx.report_outcome(UpstreamOutcome(url, None, failed.kind, time.perf_counter() - start))
            raise failed.error from None
        except GatewayError:
            ctx.report_outcome(UpstreamOutcome(url, None, "pool", time.perf_counter() - start))
            raise
        ctx.report_outcome(UpstreamOutcome(url, 200, None, time.perf_counter() - start))
        return StdioSocket(self.manager, worker, Channel(None, policy.max_queued_bytes), owns)

    # ------------------------------------------------------------------ legacy HTTP+SSE clients

    async def _legacy(self, ctx: RequestContext, policy: StdioPolicy, method: str) -> StdioResponse:
        """A legacy (2024-11-05) client: its GET stream is the session (it starts the process and carries every
        answer, after an `endpoint` event naming the session's POST URL); its POSTs are answered 202."""
        manager = self.manager
        if method == "GET":
            sid = manager.new_session_id()
            channel = Channel(sid, policy.max_queued_bytes)
            if policy.process == "shared":
                worker, owns = await self._shared(ctx, policy), False
            else:
                worker, owns = await self._spawn(ctx, policy, f"session:{hash_session(sid)}"), True
            manager.add_session(ctx.server_name, worker, channel, owns, policy)
            stream = channel.open_stream()
            assert stream is not None
            stream.on_overflow = lambda: self._overflowed(ctx, worker, stream)
            name = ctx.server_name

            def closed() -> None:
                # a legacy session ends with its stream
                manager.end_session(name, sid)

            endpoint = f"event: endpoint\ndata: {LEGACY_ENDPOINT}{sid}\n\n".encode()
            return StdioResponse.events(stream, None, None, list, on_close=closed, preamble=endpoint)
        sess = manager.session(ctx.server_name, ctx.session_id) if ctx.session_id is not None else None
        stream = sess.channel.stream if sess is not None else None
        if sess is None or stream is None or stream.closed:
            return _unknown_session()
        sess.touch()
        if not sess.owns_process:
            manager.rebind(sess, await self._shared(ctx, policy))
        try:
            await send_to_stream(sess.worker, sess.channel, stream, _messages(ctx.body))
        except ConnectionError:
            raise _process_exited() from None
        return StdioResponse.json(202, None)

    # ------------------------------------------------------------------ sessions

    def _stream(self, ctx: RequestContext, sid: str | None) -> StdioResponse:
        sess = self.manager.session(ctx.server_name, sid) if sid is not None else None
        if sess is None:
            return _unknown_session()
        channel = sess.channel
        stream = channel.open_stream()
        if stream is None:
            return StdioResponse.json(
                409, _error(None, INVALID_REQUEST, "Conflict: only one GET stream per session is allowed")
            )
        stream.on_overflow = lambda: self._overflowed(ctx, sess.worker, stream)
        sess.touch()

        def closed() -> None:
            stream.closed = True
            if channel.stream is stream:
                channel.stream = None
            sess.touch()

        return StdioResponse.events(stream, None, None, list, on_close=closed)

    async def _initialize(
        self, ctx: RequestContext, server: ServerPolicy, policy: StdioPolicy, init: JsonObj
    ) -> StdioResponse:
        manager = self.manager
        sid = manager.new_session_id()
        channel = Channel(sid, policy.max_queued_bytes)
        headers = {SESSION_HEADER: sid}
        if policy.process == "shared":
            worker = await self._shared(ctx, policy)
            manager.add_session(ctx.server_name, worker, channel, False, policy)
            return StdioResponse.json(200, {"jsonrpc": "2.0", "id": init["id"], "result": worker.init_result}, headers)
        # the log names the session as the audit trail does (its hash): the id itself is a bearer token
        worker = await self._spawn(ctx, policy, f"session:{hash_session(sid)}")
        worker.mux.channels.add(channel)
        try:
            first, exchange = await self._send(ctx, server, worker, channel, [init], policy.start_timeout_seconds)
            _discard(channel, exchange)
            if first is None:
                raise _process_exited()
        except BaseException:
            manager.stop_worker(worker)
            raise
        if "result" not in first:
            # the server refused the handshake: its answer goes to the client and no session is made
            manager.stop_worker(worker)
            return StdioResponse.json(200, first)
        manager.add_session(ctx.server_name, worker, channel, True, policy)
        return StdioResponse.json(200, first, headers)

    async def _stateless(
        self, ctx: RequestContext, server: ServerPolicy, policy: StdioPolicy, messages: list[JsonObj]
    ) -> StdioResponse:
        """A 2026-07-28 request: no session, so a process of its own (per_session) or the shared one."""
        if policy.process == "shared":
            worker = await self._shared(ctx, policy)
            return await self._dispatch(ctx, server, worker, Channel(None, policy.max_queued_bytes), messages)
        worker = await self._spawn(ctx, policy, f"request:{ctx.request_id}")
        try:
            meta = next((m.get("params", {}).get("_meta") for m in messages if isinstance(m.get("params"), dict)), None)
            caps = meta.get(META_CAPABILITIES) if isinstance(meta, dict) else None
            try:
                await initialize(worker, policy.start_timeout_seconds, caps if isinstance(caps, dict) else None)
            except (ConnectionError, TimeoutError):
                raise _process_exited() from None
            channel = Channel(None, policy.max_queued_bytes)
            worker.mux.channels.add(channel)
            resp = await self._dispatch(ctx, server, worker, channel, messages, on_done=worker.process.stop)
        except BaseException:
            self.manager.stop_worker(worker)
            raise
        return resp

    async def _shared(self, ctx: RequestContext, policy: StdioPolicy) -> Worker:
        try:
            return await self.manager.shared_worker(ctx.server_name, policy, ctx.snapshot.source_dir)
        except SpawnFailed as exc:
            raise _spawn_failed(exc) from None
        except (ConnectionError, TimeoutError):
            raise _process_exited() from None

    async def _spawn(self, ctx: RequestContext, policy: StdioPolicy, label: str) -> Worker:
        p = ctx.principal
        tenant = (p.tenant if p is not None else None) or f"{ANONYMOUS_TENANT}:{ctx.server_name}"
        owner = Owner(ctx.server_name, tenant, p.binding_id if p is not None else ctx.client_ip)
        try:
            return await self.manager.spawn(owner, policy, ctx.snapshot.source_dir, label, shared=False)
        except SpawnFailed as exc:
            raise _spawn_failed(exc) from None

    # ------------------------------------------------------------------ messages

    async def _dispatch(
        self,
        ctx: RequestContext,
        server: ServerPolicy,
        worker: Worker,
        channel: Channel,
        messages: list[JsonObj],
        on_done: Callable[[], Awaitable[None]] | None = None,
    ) -> StdioResponse:
        if not any("method" in m and "id" in m for m in messages):
            # notifications and answers only: delivered, 202 like an HTTP server
            await self._deliver(worker, channel, messages)
            if on_done is not None:
                self.manager.fire(on_done())
            return StdioResponse.json(202, None)
        first, exchange = await self._send(ctx, server, worker, channel, messages, server.timeouts.first_byte)
        single = sum(1 for m in messages if "method" in m and "id" in m) == 1 and len(messages) == 1

        def release() -> None:
            _discard(channel, exchange)
            exchange.closed = True
            for cancel in worker.mux.cancel_exchange(exchange, "the client went away"):
                self.manager.fire(worker.send(cancel))
            if on_done is not None:
                self.manager.fire(on_done())
            if channel.session_id is None:
                worker.mux.channels.discard(channel)

        if first is not None and single and exchange.done:
            release()
            return StdioResponse.json(200, first)

        def expire() -> list[JsonObj]:
            return self._expire(worker, exchange)

        return StdioResponse.events(exchange, first, server.timeouts.idle, expire, on_close=release)

    async def _deliver(self, worker: Worker, channel: Channel, messages: list[JsonObj]) -> None:
        mux = worker.mux
        for msg in messages:
            out = mux.outgoing_notification(channel, msg) if "method" in msg else mux.outgoing_response(channel, msg)
            if out is not None:
                try:
                    await worker.send(out)
                except ConnectionError:
                    raise _process_exited() from None

    async def _send(
        self,
        ctx: RequestContext,
        server: ServerPolicy,
        worker: Worker,
        channel: Channel,
        messages: list[JsonObj],
        first_byte: float,
    ) -> tuple[JsonObj | None, Exchange]:
        """Write the POST's messages; wait for the first message routed to it (the answer, or progress first)."""
        mux = worker.mux
        if mux.failure is not None or not worker.process.alive:
            raise _process_exited()
        exchange = channel.exchange()
        exchange.on_overflow = lambda: self._overflowed(ctx, worker, exchange)
        try:
            for msg in messages:
                if "method" in msg and "id" in msg:
                    if mux.shared and msg.get("method") in SHARED_REFUSED:
                        exchange.put(
                            _error(msg["id"], METHOD_NOT_FOUND, f"{msg['method']} is not served by a shared process")
                        )
                        continue
                    await worker.send(mux.outgoing_request(channel, exchange, msg))
                else:
                    await self._deliver(worker, channel, [msg])
        except ConnectionError:
            _discard(channel, exchange)
            raise _process_exited() from None
        try:
            async with asyncio.timeout(first_byte):
                first = await exchange.next()
        except TimeoutError:
            _discard(channel, exchange)
            for cancel in mux.cancel_exchange(exchange, "the gateway's first-byte timeout"):
                self.manager.fire(worker.send(cancel))
            raise _Failed(
                "timeout",
                UpstreamTimeout(
                    "the stdio server did not answer in time", reason="upstream_timeout", stage=FORWARD_STAGE
                ),
            ) from None
        except BaseException:
            # the client went away while the gateway waited: the process is told to cancel
            _discard(channel, exchange)
            for cancel in mux.cancel_exchange(exchange, "the client went away"):
                self.manager.fire(worker.send(cancel))
            raise
        if exchange.failure is not None and first is not None and "error" in first:
            _discard(channel, exchange)
            raise _process_exited()
        return first, exchange

    def _overflowed(self, ctx: RequestContext, worker: Worker, exchange: Exchange) -> None:
        """The client read slower than the server wrote (stdio.max_queued_bytes): what was queued for it is let go,
        its requests are cancelled at the process. The client's doing, not the server's: noted for the audit
        record and counted, never reported to the breaker."""
        ctx.notes["stream_error"] = "client_too_slow"
        self.manager.metrics.slow_clients.labels(ctx.server_name).inc()
        log.warning("stdio client cut off: it read slower than the server wrote", server=ctx.server_name)
        for cancel in worker.mux.cancel_exchange(exchange, "the client is not reading"):
            self.manager.fire(worker.send(cancel))

    def _expire(self, worker: Worker, exchange: Exchange) -> list[JsonObj]:
        errors, cancels = worker.mux.expire(exchange)
        for cancel in cancels:
            self.manager.fire(worker.send(cancel))
        return errors


def _discard(channel: Channel, exchange: Exchange) -> None:
    if exchange in channel.exchanges:
        channel.exchanges.remove(exchange)


def _messages(body: bytes) -> list[JsonObj]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    items = parsed if isinstance(parsed, list) else [parsed]
    return [m for m in items if isinstance(m, dict)]


def _unknown_session() -> StdioResponse:
    # what an HTTP server answers for a session it does not know: the client re-initializes
    return StdioResponse.json(404, _error(None, -32001, "Session not found"))


def _spawn_failed(exc: SpawnFailed) -> _Failed:
    return _Failed(
        "connect",
        UpstreamUnavailable(
            # what failed (a path, a variable's name) is the operator's: in the gateway's log, not the answer
            "the stdio server could not be started",
            reason="upstream_spawn_failed",
            stage=FORWARD_STAGE,
        ),
    )
