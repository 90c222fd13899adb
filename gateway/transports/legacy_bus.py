"""Cross-replica delivery of legacy HTTP+SSE refusal events (Redis pub/sub).

A legacy client POSTs to any replica but waits for the answer on the stream that one replica holds. When a POST is
refused on a replica that does not hold the stream, the refusal's `message` event is published on one channel; the
replica holding the stream writes it, after checking that the event's principal owns the session (a guessed
session id gets nothing written). Refusals are rare, so one channel for all sessions is enough.
Best effort: with Redis down the refusal is answered on the POST alone (as in embedded mode).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import orjson
import structlog
from aiohttp import web

from gateway.upstream.legacy_sse import LiveStreams

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = structlog.get_logger("gateway.transports.legacy_bus")

RECONNECT_SECONDS = 1.0


class LegacyEventBus:
    def __init__(self, client: aioredis.Redis, prefix: str, streams: LiveStreams) -> None:
        self._client = client
        self.channel = f"{prefix}legacy-events"
        self._streams = streams
        self._listener: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[bool]] = set()

    async def publish(self, server: str, session_id: str, principal: str, event: bytes) -> bool:
        payload = orjson.dumps({"s": server, "i": session_id, "p": principal, "e": event.decode()})
        try:
            await self._client.publish(self.channel, payload)
        except Exception as exc:  # Redis down: the POST's own answer still carries the error
            log.warning("legacy event not published", error=type(exc).__name__)
            return False
        return True

    def start(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="legacy-sse-events")

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def _listen(self) -> None:
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    # a bounded wait keeps the loop able to notice a dead connection
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        self._deliver(msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("legacy event subscription lost", error=type(exc).__name__)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]
            await asyncio.sleep(RECONNECT_SECONDS)

    def _deliver(self, data: bytes | str) -> None:
        try:
            msg = orjson.loads(data)
            server, session_id, principal, event = str(msg["s"]), str(msg["i"]), str(msg["p"]), str(msg["e"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring malformed legacy event")
            return
        live = self._streams.get(server, session_id)
        if live is None or live.principal != principal:
            return
        task = asyncio.create_task(live.inject(event.encode()))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)


LEGACY_BUS: web.AppKey[LegacyEventBus] = web.AppKey("legacy_event_bus", LegacyEventBus)
