"""Cross-replica delivery of legacy HTTP+SSE refusal events (Redis pub/sub).

A legacy client POSTs to any replica but waits for the answer on the stream that one replica holds. When a POST is
refused on a replica that does not hold the stream, the refusal's `message` event is published on one channel; the
replica holding the stream writes it, after checking that the event's principal owns the session (a guessed
session id gets nothing written). Refusals are rare, so one channel for all sessions is enough.
Best effort: with Redis down the refusal is answered on the POST alone (as in embedded mode).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import orjson
import structlog

from gateway.net.pubsub import RedisSubscriber
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
        self._listener = RedisSubscriber(
            client, self.channel, self._deliver, name="legacy-sse-events", reconnect_seconds=RECONNECT_SECONDS
        )
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
        self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()

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
