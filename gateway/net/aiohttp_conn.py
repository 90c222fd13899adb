"""aiohttp's connection handler held to the front door (gateway/net/frontdoor.py), its own refusals made
well-formed.

aiohttp's RequestHandler has no deadline for a request head or a body (only the hour-long keep-alive timer), and
answers a head its parser refuses with a plain-text 400 that no audit record sees. This subclass adds, per
connection, the per-peer connection cap and one timer for the read deadline in force (a head, a body), and renders
a refused head with the gateway's error renderer, audited like any other refusal.

It serves every connection aiohttp serves: those the lean server (gateway/net/h1server.py) hands over, which arrive
already counted and with their head's deadline (`adopt`), and with `http.fast_path: false` every connection.

Design note (what it replaces, invariants, what would make it obsolete): gateway/net/README.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.http import HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from gateway import drain
from gateway.errors import GatewayError, InvalidRequest, render_error
from gateway.net.frontdoor import BodyTimeout, FrontDoor, connection_refusal, head_timeout, refuse_connection
from gateway.net.h1server import refusal_bytes

log = structlog.get_logger("gateway.net.aiohttp_conn")

# renders and audits a refusal of `request` (gateway/http_contract.py `Refusal`)
Refuse = Callable[[web.BaseRequest, GatewayError], web.StreamResponse]

_IDLE = 0  # between requests (aiohttp's keep-alive timer)
_HEAD = 1  # a request head is arriving
_BODY = 2  # a request's body is arriving (its handler may already have answered: aiohttp then reads and drops it)
_BUSY = 3  # a request is being handled, its body complete


class GuardedRequestHandler(RequestHandler):
    __slots__ = (
        "_adopted",
        "_body_last",
        "_body_started",
        "_deadline",
        "_door",
        "_payload",
        "_peer",
        "_phase",
        "_quiet",
        "_refuse",
        "_tail",
        "_timer",
    )

    def __init__(
        self,
        manager: web.Server,
        door: FrontDoor,
        refuse: Refuse,
        *,
        adopted: bool,
        counted_peer: str | None,
        head_deadline: float | None,
        loop: asyncio.AbstractEventLoop,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._door = door
        self._refuse = refuse
        self._adopted = adopted
        self._peer = counted_peer
        self._phase = _HEAD
        self._deadline = head_deadline if head_deadline is not None else loop.time() + door.limits.head_seconds
        self._timer: asyncio.TimerHandle | None = None
        self._payload: StreamReader | None = None
        self._body_started = 0.0
        self._body_last = 0.0
        self._tail = False  # bytes arrived while a request was being handled: the next head has started
        self._quiet = True  # no byte of a next request received (the drain may close the connection)

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._adopted:
            peer = transport.get_extra_info("peername")
            remote = str(peer[0]) if isinstance(peer, (list, tuple)) and peer else None
            if not self._door.admit(remote):
                refuse_connection(cast(asyncio.Transport, transport), refusal_bytes(connection_refusal()))
                return
            self._peer = remote
        super().connection_made(transport)
        self._arm(self._deadline)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._door.release(self._peer)
        self._peer = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if not data:
            pass  # aiohttp's own call to parse what it buffered while paused: no client input
        else:
            self._quiet = False
            if phase == _IDLE:
                phase = self._phase = _HEAD
                self._arm(self._loop.time() + self._door.limits.head_seconds)
            elif phase == _BODY:
                self._body_last = self._loop.time()
            elif phase == _BUSY:
                self._tail = True
        super().data_received(data)
        if phase == _HEAD:
            if self._messages:
                self._track(self._messages[-1][1])
        elif phase == _BODY:
            payload = self._payload
            if payload is None or payload.is_eof():
                self._payload = None
                self._phase = _BUSY

    # ------------------------------------------------------------------ aiohttp hooks

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._answered()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a head its parser refused (and to a handler's unexpected exception), in the
        gateway's format. A refused head is audited; it is logged without its bytes, which may hold credentials."""
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        if isinstance(exc, HttpProcessingError):
            log.info("malformed request refused", status=status, error=type(exc).__name__, peer=request.remote)
            resp = self._refuse(request, InvalidRequest("malformed HTTP request", reason="malformed_request"))
        else:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            reason = "timeout" if status == 504 else "internal_error"
            resp = render_error(GatewayError("internal error", reason=reason, status=status))
        resp.force_close()
        return resp

    # ------------------------------------------------------------------ read deadlines

    def _track(self, payload: StreamReader) -> None:
        """A request head is complete: its body, if still arriving, is held to the body deadline."""
        if payload.is_eof():
            self._phase = _BUSY
            return
        now = self._loop.time()
        self._payload = payload
        self._body_started = self._body_last = now
        self._phase = _BODY
        self._arm(self._door.limits.body_deadline(now, now, payload.total_bytes))

    def _answered(self) -> None:
        """A request's answer is out."""
        if self._phase == _BODY:
            return  # aiohttp now reads and drops the rest of the body, still held to the body deadline
        self._payload = None
        if self._messages:
            self._track(self._messages[0][1])  # a pipelined request already parsed
        elif self._tail:
            self._phase = _HEAD
            self._arm(self._loop.time() + self._door.limits.head_seconds)
        else:
            self._phase = _IDLE
            self._quiet = True
        self._tail = False

    # ------------------------------------------------------------------ drain (gateway/drain.py)

    def drain_state(self) -> int:
        if self._request_in_progress:
            return drain.HANDLING
        waiter = self._waiter
        if self._quiet and waiter is not None and not waiter.done() and not self._messages:
            return drain.IDLE
        return drain.WAITING  # a head arriving, a request about to start, or an unread body read and dropped

    def drain_close(self) -> bool:
        transport = self.transport
        if transport is None:
            return True
        if not drain.quiet_to_close(transport):
            return False
        self.force_close()  # cancels the wait for a next request; the connection's task ends
        return True

    def _arm(self, deadline: float) -> None:
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None:
            return
        now = self._loop.time()
        phase = self._phase
        payload = self._payload
        if phase == _HEAD:
            due = self._deadline
        elif phase == _BODY and payload is not None and not payload.is_eof():
            if self._reading_paused or self._buffer_paused:
                self._body_last = now  # the gateway stopped reading, not the client sending
            due = self._door.limits.body_deadline(self._body_started, self._body_last, payload.total_bytes)
        else:
            return
        if now < due:
            self._timer = self._loop.call_at(due, self._on_deadline)
            return
        if phase == _HEAD:
            self._door.refused("head_timeout")
            transport.write(refusal_bytes(head_timeout()))
            self.force_close()
        else:
            assert payload is not None
            # the handler reading the body answers 408 (audited); aiohttp's lingering read after an answer takes
            # it as the end of its wait and closes
            self._door.refused("body_timeout")
            self._phase = _BUSY
            self._payload = None
            payload.set_exception(BodyTimeout())


class GuardedHandlers:
    """Makes GuardedRequestHandlers for aiohttp's server: as a listener's protocol factory, and as the lean
    server's Fallback for the connections it gives up."""

    def __init__(self, server: web.Server, door: FrontDoor, refuse: Refuse) -> None:
        self._server = server
        self._door = door
        self._refuse = refuse
        # what `web.Server.__call__` passes to each RequestHandler (the runner's handler arguments)
        self._kwargs: dict[str, Any] = dict(server._kwargs)
        self._loop: asyncio.AbstractEventLoop = server._loop

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(
            self._server,
            self._door,
            self._refuse,
            adopted=False,
            counted_peer=None,
            head_deadline=None,
            loop=self._loop,
            **self._kwargs,
        )

    def adopt(self, counted_peer: str | None, head_deadline: float | None) -> GuardedRequestHandler:
        return GuardedRequestHandler(
            self._server,
            self._door,
            self._refuse,
            adopted=True,
            counted_peer=counted_peer,
            head_deadline=head_deadline,
            loop=self._loop,
            **self._kwargs,
        )
