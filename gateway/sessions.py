"""Mcp-Session-Id bindings: session -> (principal, server, upstream instance).

A session belongs to the principal that created it (another principal presenting it gets 404, the same answer as
an unknown session, so nothing leaks), and all its traffic goes to the upstream instance that issued it (upstream
sessions live in that process's memory). In-process by default; Redis-backed when Redis is configured so any
gateway replica can serve any session.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

DEFAULT_TTL_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class SessionBinding:
    principal: str
    server: str
    upstream: str


class SessionStore(Protocol):
    async def get(self, server: str, session_id: str) -> SessionBinding | None: ...

    async def put(self, server: str, session_id: str, binding: SessionBinding) -> None: ...

    async def delete(self, server: str, session_id: str) -> None: ...

    async def count(self) -> int: ...


class MemorySessionStore:
    """In-process bindings with an idle TTL refreshed on use."""

    def __init__(self, ttl: float = DEFAULT_TTL_SECONDS, max_entries: int = 1_000_000) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._data: dict[tuple[str, str], tuple[SessionBinding, float]] = {}

    async def get(self, server: str, session_id: str) -> SessionBinding | None:
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


SESSIONS: web.AppKey[SessionStore] = web.AppKey("sessions", SessionStore)
