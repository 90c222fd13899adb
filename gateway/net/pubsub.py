"""One reconnecting Redis pub/sub subscription in a background task (breaker events, legacy SSE refusals).

Design note (hand-written network code):
  * Replaces a subscribe loop per subsystem on redis-py's `PubSub`, whose connection, once lost, stays lost.
  * Measured gain: none claimed, it is not on the request path; what it buys is behaviour: Redis going away never
    raises into the gateway, and subsystems learn when their shared state may be stale.
  * Invariants: one task per subscription; `on_state(False)` on loss and `on_state(True)` only once subscribed
    again; messages reach `on_message` in order; any error (a callback's included) is handled like a lost
    connection: logged, resubscribed after `reconnect_seconds`, never raised.
  * Obsolete when redis-py's pub/sub resubscribes on its own and reports the state changes.

Redis going away must never break the gateway: the subscriber reports the loss (`on_state(False)`), keeps trying to
resubscribe every `reconnect_seconds`, and reports `on_state(True)` once subscribed again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from gateway.loophold import background

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = structlog.get_logger("gateway.net.pubsub")


class RedisSubscriber:
    def __init__(
        self,
        client: aioredis.Redis,
        channel: str,
        on_message: Callable[[bytes | str], None],
        *,
        name: str,
        reconnect_seconds: float,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self._client = client
        self.channel = channel
        self._on_message = on_message
        self._on_state = on_state
        self._name = name
        self._reconnect = reconnect_seconds
        self._task: asyncio.Task[None] | None = None
        self._subscribed = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(background(self._run(), self._name), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _set(self, value: bool) -> None:
        if value != self._subscribed:
            self._subscribed = value
            if self._on_state is not None:
                self._on_state(value)

    async def _run(self) -> None:
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._set(True)
                while True:
                    # a bounded wait keeps the loop able to notice a dead connection
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        self._on_message(msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._subscribed:
                    log.warning("pub/sub subscription lost", name=self._name, error=type(exc).__name__)
                self._set(False)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())
            await asyncio.sleep(self._reconnect)
