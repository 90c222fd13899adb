"""Events the gateway itself sends on a relayed event stream, written between the upstream's events.

A policy reload that changes what a session's caller may list sends `notifications/*/list_changed` on the session's
standalone GET stream (gateway/transports/listchanged.py). The relay owns the stream's writes: `post()` queues the
event and wakes the relay if it is waiting for the upstream (by moving its keep-alive timer to now), and the relay
writes what is queued at the next event boundary, so an upstream event is never split.
"""

from __future__ import annotations

import asyncio
import contextlib

# events a stream may have queued; list_changed notifications are the same bytes each time, so a repeat is dropped
MAX_PENDING = 8


class Inbox:
    __slots__ = ("closing", "pending", "timer")

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        # the relay's keep-alive timeout while it waits for the upstream (None while it writes)
        self.timer: asyncio.Timeout | None = None
        # set by `close()`: the relay ends the stream at the next event boundary (the caller's key was revoked)
        self.closing = False

    def close(self) -> None:
        """End the stream: the relay stops at the next event boundary, after what is queued."""
        self.closing = True
        self._wake()

    def post(self, event: bytes) -> bool:
        """Queue `event` (a whole SSE event); False when it was already queued or the queue is full."""
        pending = self.pending
        if event in pending or len(pending) >= MAX_PENDING:
            return False
        pending.append(event)
        self._wake()
        return True

    def _wake(self) -> None:
        timer = self.timer
        if timer is not None:
            self.timer = None
            # a keep-alive timeout firing already cannot be moved: the relay wakes anyway and finds the event queued
            with contextlib.suppress(RuntimeError):
                timer.reschedule(asyncio.get_running_loop().time())

    def take(self) -> list[bytes]:
        out, self.pending = self.pending, []
        return out
