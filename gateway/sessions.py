"""Mcp-Session-Id bindings: session -> (principal, tenant, server, upstream instance), and the caps on sessions.

A session belongs to the principal that created it, for good: a binding is written once, by the answer that issued
the session, and never changes owner (`put` refuses an id bound to someone else). Another principal presenting the
id gets 404, the same answer as an unknown session, so nothing leaks; all the session's traffic goes to the upstream
instance that issued it (upstream sessions live in that process's memory).

Each principal (API key, JWT subject, anonymous client address) and each tenant holds at most `SessionCaps` live
sessions. A request that may create one reserves a place first (`reserve`, before the upstream is asked), the
binding takes the reservation (`put(..., reservation=)`), and ending the session frees it; a reservation never
taken is dropped after `RESERVATION_SECONDS`. Sessions that expired idle are found and dropped when an owner
reaches its cap, so a cap counts live sessions without any work on ordinary requests.

In-process here; Redis-backed (gateway/sessions_redis.py) when Redis is configured, so any replica serves any
session.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson

DEFAULT_TTL_SECONDS = 3600.0
DEFAULT_MAX_PER_KEY = 256
DEFAULT_MAX_PER_TENANT = 2048
# how long a session-creating request may take before its reserved place is given back
RESERVATION_SECONDS = 120.0
# how long an owner set a sweep found full is taken as full without sweeping again (unless a place comes back)
FULL_RECHECK_SECONDS = 1.0
_MAX_FULL_MARKS = 10_000
# the tenant that anonymous callers' sessions count against (as in the limiter's fair shares)
ANONYMOUS_TENANT = "_anonymous"

# why `put` or `reserve` did not bind: the id is someone else's session, or a cap is reached
Refusal = Literal["taken", "key_sessions", "tenant_sessions"]
TAKEN: Refusal = "taken"
KEY_LIMIT: Refusal = "key_sessions"
TENANT_LIMIT: Refusal = "tenant_sessions"


@dataclass(frozen=True, slots=True)
class SessionCaps:
    per_key: int = DEFAULT_MAX_PER_KEY
    per_tenant: int = DEFAULT_MAX_PER_TENANT

    def of(self, limit: Refusal) -> int:
        return self.per_key if limit == KEY_LIMIT else self.per_tenant


def tenant_key(tenant: str | None, server: str) -> str:
    """The bucket a session counts against for the tenant cap. Anonymous callers have no tenant: each route's
    anonymous sessions are their own bucket, so anonymous callers of one tenant's public server cannot fill a cap
    that another tenant's public server shares (found by the red team: 8 addresses locked every other tenant's
    anonymous routes out)."""
    return tenant if tenant is not None else f"{ANONYMOUS_TENANT}:{server}"


@dataclass(frozen=True, slots=True)
class SessionBinding:
    principal: str
    server: str
    upstream: str
    # legacy HTTP+SSE only: the upstream URL this session's POSTs go to (from its `endpoint` event)
    endpoint: str | None = None
    # the principal's tenant (None: anonymous); the session counts against its cap
    tenant: str | None = None

    @property
    def tenant_key(self) -> str:
        return tenant_key(self.tenant, self.server)

    def to_json(self) -> bytes:
        obj = {"p": self.principal, "s": self.server, "u": self.upstream}
        if self.endpoint is not None:
            obj["e"] = self.endpoint
        if self.tenant is not None:
            obj["t"] = self.tenant
        return orjson.dumps(obj)

    @classmethod
    def from_json(cls, raw: bytes | str) -> SessionBinding | None:
        try:
            obj = orjson.loads(raw)
            tenant = obj.get("t")
            return cls(
                str(obj["p"]), str(obj["s"]), str(obj["u"]), obj.get("e"), None if tenant is None else str(tenant)
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return None


class SessionStore(Protocol):
    caps: SessionCaps

    async def get(
        self, server: str, session_id: str, pending: Awaitable[Any] | None = None
    ) -> SessionBinding | None: ...

    def prefetch(self, server: str, session_id: str) -> Awaitable[Any] | None:
        """Start the lookup now, to be finished by `get(..., pending=<this>)`; None when that would not save a round
        trip. A started lookup that is never finished must be harmless (the request may be refused first)."""
        ...

    async def reserve(self, principal: str, tenant: str, token: str) -> Refusal | None:
        """Hold a place for a session `principal` (counted against tenant key `tenant`) is about to create; or the
        cap that is reached."""
        ...

    async def release(self, principal: str, tenant: str, token: str) -> None:
        """Give back a reservation no session took (the upstream answered without one, or failed)."""
        ...

    async def put(
        self, server: str, session_id: str, binding: SessionBinding, reservation: str | None = None
    ) -> Refusal | None:
        """Bind a new session. Create-only: an id bound to another principal is refused (`taken`), never taken over.
        With `reservation` the caps were checked when it was made; without, they are checked here."""
        ...

    async def delete(self, server: str, session_id: str, binding: SessionBinding | None = None) -> None: ...

    async def count(self) -> int: ...


_Member = tuple[str, str] | str  # a session (server, id), or a reservation token


class MemorySessionStore:
    """In-process bindings with an idle TTL refreshed on use, and per-owner session counts for the caps."""

    def __init__(
        self,
        ttl: float = DEFAULT_TTL_SECONDS,
        max_entries: int = 1_000_000,
        caps: SessionCaps | None = None,
    ) -> None:
        self._ttl = ttl
        self._max = max_entries
        self.caps = caps or SessionCaps()
        self._data: dict[tuple[str, str], tuple[SessionBinding, float]] = {}
        # "k:<principal>" / "t:<tenant>" -> that owner's sessions (value 0.0) and reservations (value: deadline)
        self._owned: dict[str, dict[_Member, float]] = {}
        # owner set -> until when it is known full (see _full)
        self._full_until: dict[str, float] = {}
        self._next_sweep = time.monotonic() + ttl

    # ------------------------------------------------------------------------------------------- lookups

    async def get(self, server: str, session_id: str, pending: Awaitable[Any] | None = None) -> SessionBinding | None:
        key = (server, session_id)
        item = self._data.get(key)
        if item is None:
            return None
        binding, expires = item
        now = time.monotonic()
        if expires <= now:
            self._drop(key, binding)
            return None
        self._data[key] = (binding, now + self._ttl)
        return binding

    def prefetch(self, server: str, session_id: str) -> Awaitable[Any] | None:
        return None  # a dict lookup: nothing to overlap

    def peek(self, server: str, session_id: str) -> SessionBinding | None:
        """The live binding, without refreshing it."""
        item = self._data.get((server, session_id))
        if item is None or item[1] <= time.monotonic():
            return None
        return item[0]

    # ------------------------------------------------------------------------------------------- caps

    async def reserve(self, principal: str, tenant: str, token: str) -> Refusal | None:
        now = time.monotonic()
        mine = self._owner(f"k:{principal}")
        theirs = self._owner(f"t:{tenant}")
        if self._full(f"k:{principal}", self.caps.per_key, now):
            return KEY_LIMIT
        if self._full(f"t:{tenant}", self.caps.per_tenant, now):
            return TENANT_LIMIT
        mine[token] = theirs[token] = now + RESERVATION_SECONDS
        return None

    async def release(self, principal: str, tenant: str, token: str) -> None:
        self._unown(f"k:{principal}", token)
        self._unown(f"t:{tenant}", token)

    def _owner(self, name: str) -> dict[_Member, float]:
        owned = self._owned.get(name)
        if owned is None:
            owned = self._owned[name] = {}
        return owned

    def _unown(self, name: str, member: _Member) -> None:
        self._full_until.pop(name, None)  # a place came back
        owned = self._owned.get(name)
        if owned is not None:
            owned.pop(member, None)
            if not owned:
                del self._owned[name]

    def _full(self, name: str, cap: int, now: float) -> bool:
        owned = self._owner(name)
        if len(owned) < cap:
            return False
        if self._full_until.get(name, 0.0) > now:
            # found full by a sweep within the last second and no place given back since: a flood of refusals at
            # the cap must not rescan every member each time (the Redis store does the same, `_FULL`)
            return True
        # at the cap: drop what ended without telling us (idle expiry, reservations never taken), then count again
        for member, deadline in list(owned.items()):
            if isinstance(member, str):
                if deadline <= now:
                    del owned[member]
                continue
            item = self._data.get(member)
            if item is None or item[1] <= now:
                del owned[member]
        if len(owned) >= cap:
            if len(self._full_until) >= _MAX_FULL_MARKS:
                self._full_until.clear()
            self._full_until[name] = now + FULL_RECHECK_SECONDS
            return True
        return False

    # ------------------------------------------------------------------------------------------- changes

    async def put(
        self, server: str, session_id: str, binding: SessionBinding, reservation: str | None = None
    ) -> Refusal | None:
        if reservation is not None:
            await self.release(binding.principal, binding.tenant_key, reservation)
        key = (server, session_id)
        now = time.monotonic()
        held = self.peek(server, session_id)
        if held is not None:
            if held.principal != binding.principal:
                return TAKEN
            self._data[key] = (held, now + self._ttl)
            return None
        if reservation is None:
            if self._full(f"k:{binding.principal}", self.caps.per_key, now):
                return KEY_LIMIT
            if self._full(f"t:{binding.tenant_key}", self.caps.per_tenant, now):
                return TENANT_LIMIT
        self._insert(key, binding, now)
        return None

    def remember(self, server: str, session_id: str, binding: SessionBinding) -> None:
        """Hold a copy of `binding` (new, or refreshed), without the caps: for a binding the shared store admitted.
        A copy is only a fallback: when this store is full of live sessions it is not kept."""
        key = (server, session_id)
        now = time.monotonic()
        item = self._data.get(key)
        if item is not None:
            self._data[key] = (item[0], now + self._ttl)
            return
        if len(self._data) >= self._max:
            self._sweep(now)
            if len(self._data) >= self._max:
                return
        self._insert(key, binding, now)

    def _insert(self, key: tuple[str, str], binding: SessionBinding, now: float) -> None:
        if now >= self._next_sweep or len(self._data) >= self._max:
            self._sweep(now)
        self._data[key] = (binding, now + self._ttl)
        self._owner(f"k:{binding.principal}")[key] = 0.0
        self._owner(f"t:{binding.tenant_key}")[key] = 0.0

    async def delete(self, server: str, session_id: str, binding: SessionBinding | None = None) -> None:
        self.forget(server, session_id)

    def forget(self, server: str, session_id: str) -> None:
        key = (server, session_id)
        item = self._data.get(key)
        if item is not None:
            self._drop(key, item[0])

    def _drop(self, key: tuple[str, str], binding: SessionBinding) -> None:
        self._data.pop(key, None)
        self._unown(f"k:{binding.principal}", key)
        self._unown(f"t:{binding.tenant_key}", key)

    def _sweep(self, now: float) -> None:
        """Drop every binding that expired idle: bounds the memory of bindings nobody asks for again (runs at most
        once per TTL, or when the store is full)."""
        self._next_sweep = now + self._ttl
        for key, (binding, expires) in list(self._data.items()):
            if expires <= now:
                self._drop(key, binding)

    async def count(self) -> int:
        return len(self._data)
