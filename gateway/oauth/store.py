"""The authorization server's state: the interface, and the embedded in-memory store (no PostgreSQL).

Single use is the store's job: `use_code` and `use_refresh` mark the entry used in one step, so of two concurrent
presentations exactly one wins, and the loser learns it was a replay (which revokes the grant's family).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.oauth.model import Client, CodeGrant, Grant

UseStatus = Literal["ok", "unknown", "replayed", "expired", "revoked"]
MAX_ENTRIES = 200_000


class OAuthStore(Protocol):
    async def add_client(self, client: Client, limit: int, unclaimed_ttl: float) -> bool:
        """Store a registration; False when `limit` clients are registered even after unclaimed ones older than
        `unclaimed_ttl` seconds were deleted."""
        ...

    async def claim_client(self, client_id: str) -> None:
        """A user approved the client (its first code): it is kept from now on."""
        ...

    async def client(self, client_id: str) -> Client | None: ...

    async def put_code(self, code_hash: str, code: CodeGrant, expires_at: float) -> None: ...

    async def use_code(self, code_hash: str) -> tuple[CodeGrant | None, UseStatus]:
        """Consume a code. A second use answers ("replayed", the code) so the caller can revoke its family."""
        ...

    async def put_refresh(self, token_hash: str, grant: Grant, expires_at: float) -> None: ...

    async def use_refresh(self, token_hash: str) -> tuple[Grant | None, UseStatus]:
        """Consume a refresh token for rotation; "replayed" when it was rotated before (reuse)."""
        ...

    async def find_refresh(self, token_hash: str) -> Grant | None: ...

    async def revoke_family(self, family: str) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class _Entry:
    value: object
    expires_at: float
    used: bool = False
    revoked: bool = False
    family: str = ""


class MemoryStore:
    """The embedded store: one process's dicts, bounded. State is lost on restart (users sign in again) and not
    shared between workers, so `workers > 1` needs PostgreSQL (gateway/oauth/factory.py enforces it)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._clients: dict[str, Client] = {}  # in registration order
        self._unclaimed: dict[str, float] = {}  # client id -> registered at (time.time()), in that order
        self._codes: dict[str, _Entry] = {}
        self._refresh: dict[str, _Entry] = {}

    async def add_client(self, client: Client, limit: int, unclaimed_ttl: float) -> bool:
        if len(self._clients) >= limit:
            self.drop_unclaimed(self._clock() - unclaimed_ttl)
            if len(self._clients) >= limit:
                return False
        self._clients[client.client_id] = client
        self._unclaimed[client.client_id] = self._clock()
        return True

    def drop_unclaimed(self, registered_before: float) -> None:
        while self._unclaimed:
            client_id, at = next(iter(self._unclaimed.items()))
            if at >= registered_before:
                return
            del self._unclaimed[client_id]
            self._clients.pop(client_id, None)

    async def claim_client(self, client_id: str) -> None:
        self._unclaimed.pop(client_id, None)

    async def client(self, client_id: str) -> Client | None:
        return self._clients.get(client_id)

    def _prune(self, table: dict[str, _Entry]) -> None:
        if len(table) < MAX_ENTRIES:
            return
        now = time.time()
        for k in [k for k, e in table.items() if e.expires_at <= now]:
            del table[k]
        while len(table) >= MAX_ENTRIES:
            del table[next(iter(table))]  # the oldest: insertion order

    async def put_code(self, code_hash: str, code: CodeGrant, expires_at: float) -> None:
        self._prune(self._codes)
        self._codes[code_hash] = _Entry(code, expires_at, family=code.grant.family)

    async def use_code(self, code_hash: str) -> tuple[CodeGrant | None, UseStatus]:
        return self._use(self._codes, code_hash)  # type: ignore[return-value]

    async def put_refresh(self, token_hash: str, grant: Grant, expires_at: float) -> None:
        self._prune(self._refresh)
        self._refresh[token_hash] = _Entry(grant, expires_at, family=grant.family)

    async def use_refresh(self, token_hash: str) -> tuple[Grant | None, UseStatus]:
        return self._use(self._refresh, token_hash)  # type: ignore[return-value]

    @staticmethod
    def _use(table: dict[str, _Entry], key: str) -> tuple[object | None, UseStatus]:
        entry = table.get(key)
        if entry is None:
            return None, "unknown"
        if entry.revoked:
            return entry.value, "revoked"
        if entry.used:
            return entry.value, "replayed"
        if entry.expires_at <= time.time():
            return None, "expired"
        entry.used = True
        return entry.value, "ok"

    async def find_refresh(self, token_hash: str) -> Grant | None:
        entry = self._refresh.get(token_hash)
        return entry.value if entry is not None else None  # type: ignore[return-value]

    async def revoke_family(self, family: str) -> None:
        for table in (self._codes, self._refresh):
            for entry in table.values():
                if entry.family == family:
                    entry.revoked = True

    async def close(self) -> None:
        return None
