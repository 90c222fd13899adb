"""Closing keep-alive connections during a drain without resetting a request on its way (docs/operations.md).

HTTP/1.1 has two ways to tell a client not to send on a connection any more: `Connection: close` on an answer, or
closing the connection. Closing it while the client's next request is on its way makes the kernel answer that
request with a reset: the client cannot know whether it was processed, and the gateway never saw (or audited) it.
So, as Envoy and nginx do when draining:

  - every answer prepared after the drain began says `Connection: close`, and its connection closes after it;
  - a connection idle when the drain begins (or idle again after an answer prepared before it) keeps its
    `http.drain_idle_grace_seconds` to bring a next request, which is then served with `Connection: close`;
  - after that grace an idle connection is closed, but only if no byte of a request has arrived, not even one
    still in the kernel's receive buffer (peeked), and with a FIN first, so that a client that looks before it
    writes (as HTTP clients do before reusing a keep-alive connection) sees the end instead of writing into it.

Idleness is observed by the drain's sweep, not stamped on each request: a connection seen idle on consecutive
sweeps for the whole grace is closed; one that served a request in between closed itself (`Connection: close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterable
from typing import Protocol

# what a connection is doing, as the drain sees it
IDLE = 0  # between requests, and no byte of a next request received
WAITING = 1  # bytes of a request arrived and nothing handles them yet, or an unread body is being read and dropped
HANDLING = 2  # a handler runs (a request, or a long-lived stream: the drain tracker tells which)

# how often the drain looks at its connections
SWEEP_SECONDS = 0.05


class DrainConn(Protocol):
    def drain_state(self) -> int:
        """IDLE, WAITING or HANDLING."""
        ...

    def drain_close(self) -> bool:
        """Close an IDLE connection unless request bytes are already waiting in the kernel; True when closed."""
        ...


def quiet_to_close(transport: asyncio.BaseTransport) -> bool:
    """True when no input is waiting in the socket's receive buffer; the connection is then half-closed (FIN) at
    once, so the client sees the end before the transport closes on the next loop iteration. False: a request (or
    part of one) is there, and the event loop will read it."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return True
    # uvloop's socket stand-in has no recv(): a socket object over the same descriptor, detached (not closed) after
    raw = socket.socket(fileno=sock.fileno())
    try:
        try:
            if raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                return False
        except BlockingIOError:
            pass  # nothing to read
        except OSError:
            return True  # reset or otherwise broken: nothing to protect
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_WR)
        return True
    finally:
        raw.detach()


class IdleSweep:
    """Closes connections seen idle for the whole grace; counts what the drain still waits for."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._idle_since: dict[DrainConn, float] = {}
        self.closed = 0

    def sweep(self, conns: Iterable[DrainConn], now: float) -> int:
        """Returns how many connections are idle (within their grace) or waiting for their input to be served."""
        pending = 0
        seen: dict[DrainConn, float] = {}
        for conn in conns:
            state = conn.drain_state()
            if state == HANDLING:
                continue
            if state == WAITING:
                pending += 1
                continue
            since = self._idle_since.get(conn, now)
            if now - since >= self.grace and conn.drain_close():
                self.closed += 1
                continue
            seen[conn] = since
            pending += 1
        self._idle_since = seen
        return pending
