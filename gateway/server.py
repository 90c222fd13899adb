"""Process startup: event loop, logging, listener, signals, graceful drain.

`run()` serves in this process: with `workers: 1`, or as one of the worker supervisor's processes
(gateway/net/workers.py, which starts N processes that all listen on the same port with SO_REUSEPORT). The command
line (`_serve` in gateway/cli.py) chooses between this and the supervisor.

Drain on SIGTERM/SIGINT, in order:
  1. stop accepting: the listening socket closes; from then on every answer says `Connection: close` and its
     connection closes after it;
  2. let in-flight requests finish, up to `http.shutdown_grace_seconds` (long-lived streams do not count: they
     never finish by themselves), and serve the requests that still arrive on open connections; a connection
     idle for `http.drain_idle_grace_seconds` is closed, but never once a request's bytes have arrived
     (gateway/drain.py);
  3. end what is left properly: WebSockets get a close frame (1001 going away), server-sent event streams get
     their final chunk (a clean end of stream, so clients reconnect elsewhere instead of seeing a broken
     transfer); requests still running at the deadline are cancelled;
  4. run the app's shutdown and cleanup (audit flush, pools closed) and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import cast

import structlog
from aiohttp import WSCloseCode, web

if sys.platform != "win32":
    # a dependency everywhere but Windows (pyproject.toml), where the default loop serves
    import uvloop

from gateway import looplag
from gateway.app import STREAMABLE_HANDLER, build_app
from gateway.compose import GATEWAY
from gateway.drain import SWEEP_SECONDS, DrainConn, IdleSweep
from gateway.exposure import AdminListener
from gateway.http_contract import HTTP_REFUSAL
from gateway.logging import configure_logging
from gateway.metrics import METRICS, sampler_ctx, worker_index
from gateway.net.aiohttp_conn import GuardedHandlers, GuardedRequestHandler
from gateway.net.frontdoor import FRONT_DOOR, LINGER_SECONDS
from gateway.net.h1server import FastRequest, FastServer, FastSite
from gateway.settings import Settings

log = structlog.get_logger("gateway.server")

# a request of either server this module runs (the drain tracker cancels their handlers' tasks)
AnyRequest = web.BaseRequest | FastRequest

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# after the grace period, how long ended streams get to unwind before they are cancelled
STREAM_CLOSE_SECONDS = 2.0
# long-lived responses: GET event streams (streamable HTTP, legacy SSE), 2026 listen streams, WebSockets
STREAM_KINDS = ("sse", "listen", "websocket")


def _install_uvloop() -> None:
    if sys.platform != "win32":
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _maybe_event_stream(response: web.StreamResponse) -> bool:
    """False when the answer cannot be an event stream: parsing Content-Type (`content_type`) costs more than the
    rest of the prepare hook, and almost every answer is JSON."""
    raw = response.headers.get("Content-Type")
    return raw is not None and "event-stream" in raw.lower()


class DrainTracker:
    """Knows which requests are running and which of them are long-lived streams (SSE GET, WebSocket)."""

    def __init__(self) -> None:
        # keyed by id(): aiohttp requests are mappings, so they are not hashable
        self._active: dict[int, AnyRequest] = {}
        self._streams: dict[int, tuple[AnyRequest, web.StreamResponse]] = {}
        self._kinds: dict[int, str] = {}
        self.draining = False

    def install(self, app: web.Application) -> None:
        enter, leave = self.enter, self.leave

        @web.middleware
        async def track(request: web.Request, handler: Handler) -> web.StreamResponse:
            enter(request)
            try:
                return await handler(request)
            finally:
                leave(request)

        app.middlewares.append(track)
        app.on_response_prepare.append(self._on_prepare)

    # the middleware above calls these for aiohttp's requests, the lean server (gateway/net/h1server.py) for its own
    def enter(self, request: AnyRequest) -> None:
        self._active[id(request)] = request

    def leave(self, request: AnyRequest) -> None:
        key = id(request)
        self._active.pop(key, None)
        self._streams.pop(key, None)
        self._kinds.pop(key, None)

    async def _on_prepare(self, request: AnyRequest, response: web.StreamResponse) -> None:
        # GET event streams (streamable HTTP, legacy SSE) and 2026 `subscriptions/listen` POSTs stay open until
        # someone ends them; the gateway has already checked that a modern request's Mcp-Method header matches
        # its body before anything is streamed back
        kind: str | None = None
        if isinstance(response, web.WebSocketResponse):
            kind = "websocket"
        else:
            if self.draining and not isinstance(request, FastRequest):
                # aiohttp has computed its Connection header already (the lean server reads its connection's own
                # flag): the client must send its next request elsewhere, not into a connection about to close
                response.force_close()
                response.headers["Connection"] = "close"
            if _maybe_event_stream(response) and response.content_type == "text/event-stream":
                if request.method == "GET":
                    kind = "sse"
                elif request.headers.get("Mcp-Method") == "subscriptions/listen":
                    kind = "listen"
        if kind is not None:
            self._streams[id(request)] = (request, response)
            self._kinds[id(request)] = kind

    @property
    def busy(self) -> int:
        """Requests in flight that are expected to finish by themselves."""
        return sum(1 for key in self._active if key not in self._streams)

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def streams_by_kind(self) -> dict[str, int]:
        counts = dict.fromkeys(STREAM_KINDS, 0)
        for kind in self._kinds.values():
            counts[kind] += 1
        return counts

    async def end_streams(self) -> int:
        """Close WebSockets with 1001 and finish SSE streams cleanly, all at once; returns how many were ended."""
        streams = list(self._streams.values())
        await asyncio.gather(*(self._end(request, response) for request, response in streams))
        return len(streams)

    @staticmethod
    async def _end(request: AnyRequest, response: web.StreamResponse) -> None:
        try:
            async with asyncio.timeout(STREAM_CLOSE_SECONDS):
                if isinstance(response, web.WebSocketResponse):
                    # the handler's receive loop sees the close and shuts its upstream socket itself
                    await response.close(code=WSCloseCode.GOING_AWAY, message=b"gateway shutting down")
                    return
                # the terminating chunk: the client sees a complete stream, not a reset connection
                await response.write_eof()
        except Exception as exc:  # the peer may be gone already; the handler is cancelled below or at the end
            log.debug("ending stream failed", error=repr(exc), path=request.path)
        # an SSE handler is blocked reading its upstream, which may stay quiet: stop it (closing the upstream
        # request too) rather than wait
        if request.task is not None:
            request.task.cancel()

    def cancel(self, *, streams_too: bool = False) -> int:
        """Cancel the handlers still running (by default only requests, not streams); returns how many."""
        victims = [r for key, r in self._active.items() if streams_too or key not in self._streams]
        for request in victims:
            if request.task is not None:
                request.task.cancel()
        return len(victims)

    async def wait_idle(self, deadline: float, *, streams_too: bool = False) -> bool:
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            pending = len(self._active) if streams_too else self.busy
            if pending == 0:
                return True
            await asyncio.sleep(0.05)
        return False


async def drain(
    runner: web.AppRunner,
    tracker: DrainTracker,
    grace: float,
    fast: FastServer | None = None,
    idle_grace: float = 0.0,
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    # stop accepting first: a client told `Connection: close` must not reconnect to this listener (with
    # SO_REUSEPORT its next connection goes to another worker or process on the port)
    for site in list(runner.sites):
        await site.stop()
    tracker.draining = True
    if fast is not None:
        fast.pre_shutdown()
    log.info("draining", in_flight=tracker.busy, streams=tracker.open_streams, grace_seconds=grace)
    sweep = IdleSweep(min(idle_grace, grace))
    finished = await _serve_out(runner, tracker, fast, deadline, sweep)
    # streams first: cancelling an SSE handler before its final chunk is written would cut the stream
    ended = await tracker.end_streams()
    cancelled = 0 if finished else tracker.cancel()
    if not await tracker.wait_idle(loop.time() + STREAM_CLOSE_SECONDS, streams_too=True):
        cancelled += tracker.cancel(streams_too=True)
    log.info("drained", in_flight_finished=finished, idle_closed=sweep.closed, streams_ended=ended, cancelled=cancelled)


def _connections(runner: web.AppRunner, fast: FastServer | None) -> list[DrainConn]:
    conns: list[DrainConn] = list(fast.connections) if fast is not None else []
    if runner.server is not None:
        conns += [c for c in runner.server.connections if isinstance(c, GuardedRequestHandler)]
    return conns


async def _serve_out(
    runner: web.AppRunner, tracker: DrainTracker, fast: FastServer | None, deadline: float, sweep: IdleSweep
) -> bool:
    """Until the deadline: serve what still arrives on open connections and close those that stay idle for the
    sweep's grace (gateway/drain.py). True when no request is in flight and no connection is left but streams."""
    loop = asyncio.get_running_loop()
    while True:
        pending = sweep.sweep(_connections(runner, fast), loop.time())
        if pending == 0 and tracker.busy == 0:
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(SWEEP_SECONDS)


def install_samplers(
    app: web.Application, runner: web.AppRunner, tracker: DrainTracker, lean: list[FastServer] | None = None
) -> None:
    """Gauges read from live state at scrape time (and every few seconds, for the other workers' scrapes)."""
    metrics = app[METRICS]
    store = app[GATEWAY].sessions

    async def sessions() -> None:
        metrics.sessions_open.set(await store.count())

    def connections() -> None:
        server = runner.server
        count = len(server.connections) if server is not None else 0
        count += sum(len(fast.connections) for fast in lean or ())
        metrics.connections_open.set(count)

    def streams() -> None:
        for kind, count in tracker.streams_by_kind().items():
            metrics.streams_open.labels(kind).set(count)

    metrics.add_sampler(sessions)
    metrics.add_sampler(streams)
    metrics.add_sampler(connections)


def aiohttp_handlers(app: web.Application, runner: web.AppRunner) -> GuardedHandlers:
    """aiohttp's connection handlers, held to the front door (gateway/net/aiohttp_conn.py)."""
    assert runner.server is not None
    return GuardedHandlers(runner.server, app[FRONT_DOOR], app[HTTP_REFUSAL])


def fast_server(
    app: web.Application, tracker: DrainTracker, settings: Settings, fallback: GuardedHandlers
) -> FastServer:
    """The lean HTTP/1.1 server for `POST` and `GET /mcp/{server}`, in front of aiohttp's (gateway/net/h1server.py)."""
    policy = app[GATEWAY].policy

    def route_transport(name: str) -> str | None:
        server = policy.active.snapshot.servers.get(name)
        return server.transport if server is not None else None

    async def on_prepare(request: AnyRequest, response: web.StreamResponse) -> None:
        # the app's response-prepare signal, as aiohttp sends it (the drain tracker learns of event streams there)
        await app.on_response_prepare.send(cast(web.Request, request), response)

    return FastServer(
        fallback,
        app[STREAMABLE_HANDLER],
        route_transport,
        app[FRONT_DOOR],
        max_body_bytes=settings.http.max_body_bytes,
        on_prepare=on_prepare,
        on_enter=tracker.enter,
        on_leave=tracker.leave,
        on_hand_over=app[METRICS].lean_handovers.inc,
        keepalive_seconds=settings.http.keepalive_idle_seconds,
    )


def tune_gc() -> None:
    """Move everything alive after startup out of the collector's sight and collect young objects less often.

    The request path allocates many short-lived objects that reference counting frees at once; the default
    gen-0 threshold (700) still runs a collection every few requests and each full collection walked the whole
    startup heap (about 45 ms loop stalls, 8-12% of CPU in the benchmark, with almost nothing collected). Cycles
    are still collected, only less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


# how long a thread doing CPU work (policy loading, the workers' metrics merge, spool reads) may keep the GIL while
# the event loop waits for it: the default 5 ms showed as 5-8 ms loop stalls during policy reloads, 1 ms as ~2 ms
GIL_SWITCH_INTERVAL = 0.001


def tune_threads() -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)


async def serve(settings: Settings, reuse_port: bool = False) -> None:
    app = build_app(settings)
    tracker = DrainTracker()
    tracker.install(app)
    app.cleanup_ctx.append(sampler_ctx)
    looplag.install(app, app[METRICS], settings.loop_lag_probe_seconds)
    # handler_cancellation: a client that disconnects cancels its handler, which closes the upstream request.
    # shutdown_timeout only bounds what drain() left behind (normally nothing).
    # lingering_time: how long the rest of a body no handler read is read and dropped (gateway/net/frontdoor.py)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=STREAM_CLOSE_SECONDS,
        lingering_time=LINGER_SECONDS,
        # aiohttp's own keep-alive timer (an hour by default): an idle connection after an answer is closed
        keepalive_timeout=settings.http.keepalive_idle_seconds,
    )
    lean: list[FastServer] = []  # the lean server, once the runner (its fallback) is set up
    admin: AdminListener | None = None  # `admin_listen`: bound once, by worker 0 (gateway/exposure.py)
    install_samplers(app, runner, tracker, lean)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        # inside the try: a failed startup (a broken policy) still runs the cleanup of what did start
        await runner.setup()
        handlers = aiohttp_handlers(app, runner)
        factory: Callable[[], asyncio.BaseProtocol] = handlers
        # before the listener opens: its full collection holds the loop ~45 ms, which a first request must not wait
        tune_gc()
        tune_threads()
        if settings.http.fast_path:
            lean.append(fast_server(app, tracker, settings, handlers))
            factory = lean[0]
        site = FastSite(
            runner, factory, settings.listen.host, settings.listen.port, reuse_port=reuse_port or None, backlog=1024
        )
        await site.start()
        if settings.admin_listen.port is not None and worker_index() == 0:
            admin = AdminListener(
                runner,
                settings.admin_listen.host,
                settings.admin_listen.port,
                lambda server: GuardedHandlers(server, app[FRONT_DOOR], app[HTTP_REFUSAL]),
            )
            await admin.start()
        log.info(
            "gateway listening",
            host=settings.listen.host,
            port=settings.listen.port,
            public_url=settings.public_url,
            reuse_port=reuse_port,
        )
        await stop.wait()
        if admin is not None:
            admin.stop_accepting()
        await drain(
            runner,
            tracker,
            settings.http.shutdown_grace_seconds,
            lean[0] if lean else None,
            settings.http.drain_idle_grace_seconds,
        )
    finally:
        log.info("shutting down")
        for fast in lean:
            fast.shutdown()
        if admin is not None:
            await admin.shutdown(STREAM_CLOSE_SECONDS)
        await runner.cleanup()
        log.info("stopped")


def run(settings: Settings) -> int:
    """Serve in this process (a single process, or one worker of the supervisor: `_serve` in gateway/cli.py chooses)."""
    configure_logging(settings.logging.level, settings.logging.format)
    _install_uvloop()
    asyncio.run(serve(settings, reuse_port=settings.workers > 1))
    # drained and cleaned up; the loop has put the default handlers back, and a late second SIGTERM (a process
    # group signal after the supervisor's own) must not turn a clean exit into a kill
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return 0
