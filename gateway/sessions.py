"""Mcp-Session-Id bindings: session -> (principal, server, upstream instance).

A session belongs to the principal that created it (another principal presenting it gets 404, the same answer as
an unknown session, so nothing leaks), and all its traffic goes to the upstream instance that issued it (upstream
sessions live in that process's memory). In-process by default; Redis-backed when Redis is configured so any
gateway replica can serve any session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import structlog
from aiohttp import web

from gateway.redis_client import hot_path

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from gateway.redis_mux import RedisMux

log = structlog.get_logger("gateway.sessions")

DEFAULT_TTL_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class SessionBinding:
    principal: str
    server: str
    upstream: str
    # legacy HTTP+SSE only: the upstream URL this session's POSTs go to (from its `endpoint` event)
    endpoint: str | None = None

    def to_json(self) -> bytes:
        obj = {"p": self.principal, "s": self.server, "u": self.upstream}
        if self.endpoint is not None:
            obj["e"] = self.endpoint
        return orjson.dumps(obj)

    @classmethod
    def from_json(cls, raw: bytes | str) -> SessionBinding | None:
        try:
            obj = orjson.loads(raw)
            return cls(str(obj["p"]), str(obj["s"]), str(obj["u"]), obj.get("e"))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None


class SessionStore(Protocol):
    async def get(
        self, server: str, session_id: str, pending: Awaitable[Any] | None = None
    ) -> SessionBinding | None: ...

    def prefetch(self, server: str, session_id: str) -> Awaitable[Any] | None:
        """Start the lookup now, to be finished by `get(..., pending=<this>)`; None when that would not save a round
        trip. A started lookup that is never finished must be harmless (the request may be refused first)."""
        ...

    async def put(self, server: str, session_id: str, binding: SessionBinding) -> None: ...

    async def delete(self, server: str, session_id: str) -> None: ...

    async def count(self) -> int: ...


class MemorySessionStore:
    """In-process bindings with an idle TTL refreshed on use."""

    def __init__(self, ttl: float = DEFAULT_TTL_SECONDS, max_entries: int = 1_000_000) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._data: dict[tuple[str, str], tuple[SessionBinding, float]] = {}

    async def get(self, server: str, session_id: str, pending: Awaitable[Any] | None = None) -> SessionBinding | None:
        key = (server, session_id)
        item = self._data.get(key)
        if item is None:
            return None
        binding, expires = item
        now = time.monotonic()
        if expires <= now:
            del self._data[key]
            return None
        self._data[key] = (binding, now + self._ttl)
        return binding

    def prefetch(self, server: str, session_id: str) -> Awaitable[Any] | None:
        return None  # a dict lookup: nothing to overlap

    async def put(self, server: str, session_id: str, binding: SessionBinding) -> None:
        if len(self._data) >= self._max:
            self._evict_expired()
        self._data[(server, session_id)] = (binding, time.monotonic() + self._ttl)

    async def delete(self, server: str, session_id: str) -> None:
        self._data.pop((server, session_id), None)

    async def count(self) -> int:
        return len(self._data)

    def _evict_expired(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, exp) in self._data.items() if exp <= now]:
            del self._data[key]


class RedisSessionStore:
    """Bindings shared by every gateway replica: one Redis key per session, idle TTL refreshed on use.

    `get` is one round trip (GETEX refreshes the TTL while reading), over the client's multiplexed hot-path
    connection when it has one (gateway/redis_mux.py). Redis being down must not break the sessions this replica
    created: every binding is also kept in a local store, which answers when Redis does not (a session created on
    another replica is then unknown here: 404, the client re-initializes).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        ttl: float = DEFAULT_TTL_SECONDS,
        local: MemorySessionStore | None = None,
        on_error: Callable[[str], None] | None = None,
        hot: RedisMux | None = None,
    ) -> None:
        self._redis = client
        self._hot = hot if hot is not None else hot_path(client)
        self._prefix = f"{prefix}sess:"
        self._ttl_ms = max(1, int(ttl * 1000))
        self._local = local or MemorySessionStore(ttl)
        self._on_error = on_error  # counts failures (a metric), by operation

    def _key(self, server: str, session_id: str) -> str:
        return f"{self._prefix}{server}:{session_id}"

    def _failed(self, op: str, exc: Exception) -> None:
        if self._on_error is not None:
            self._on_error(op)
        log.warning("session store: redis unavailable, using local bindings", op=op, error=type(exc).__name__)

    def prefetch(self, server: str, session_id: str) -> Awaitable[Any] | None:
        """Send the GETEX now on the hot-path connection, so it leaves in the same write as the limiter's script and
        both replies come back in one read (one round trip per request instead of two). The only difference from a
        later `get`: a request refused after this point (by the limiter or the breaker) has still refreshed its
        session's idle TTL, as any request of a live client would have."""
        hot = self._hot
        if hot is None or not hot.connected:
            return None
        try:
            fut = hot.execute("GETEX", self._key(server, session_id), "PX", self._ttl_ms)
        except Exception:  # in-flight bound reached: `get` decides what that means
            return None
        if not isinstance(fut, asyncio.Future):
            if isinstance(fut, Coroutine):
                fut.close()  # not connected after all: execute handed back a coroutine; never start it
            return None
        fut.add_done_callback(_retrieve)
        return fut

    async def get(self, server: str, session_id: str, pending: Awaitable[Any] | None = None) -> SessionBinding | None:
        key = self._key(server, session_id)
        try:
            if pending is not None:
                raw = await pending
            elif self._hot is not None:
                raw = await self._hot.execute("GETEX", key, "PX", self._ttl_ms)
            else:
                raw = await self._redis.getex(key, px=self._ttl_ms)
        except Exception as exc:  # any Redis failure means "Redis is down": degrade, never 5xx
            self._failed("get", exc)
            return await self._local.get(server, session_id)
        if raw is None:
            # expired or ended elsewhere: the local copy must not resurrect it
            await self._local.delete(server, session_id)
            return None
        return SessionBinding.from_json(raw)

    async def put(self, server: str, session_id: str, binding: SessionBinding) -> None:
        await self._local.put(server, session_id, binding)
        try:
            await self._redis.set(self._key(server, session_id), binding.to_json(), px=self._ttl_ms)
        except Exception as exc:
            self._failed("put", exc)

    async def delete(self, server: str, session_id: str) -> None:
        await self._local.delete(server, session_id)
        try:
            await self._redis.delete(self._key(server, session_id))
        except Exception as exc:
            self._failed("delete", exc)

    async def count(self) -> int:
        """Bindings this replica created and still holds (a Redis-wide count would need a full key scan)."""
        return await self._local.count()


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # a prefetch whose request was refused before it was awaited: take its exception, if any, so asyncio does not
    # log "Future exception was never retrieved" for a Redis failure the request never needed to know about
    if not fut.cancelled():
        fut.exception()


SESSIONS: web.AppKey[SessionStore] = web.AppKey("sessions", SessionStore)
