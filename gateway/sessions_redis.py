"""Session bindings shared by every gateway replica through Redis, and what survives Redis going away.

Keys (all under `redis.key_prefix`):

- `sess:<server>:<session id>`: the binding (JSON), `PX` idle TTL refreshed by the `GETEX` every request makes.
- `sessend:<server>:<session id>`: a tombstone for the TTL after a session ended (DELETE, upstream 404, legacy
  stream closed), so that no replica's local copy brings an ended session back.
- `sessown:k:<principal>` / `sessown:t:<tenant>`: sorted sets of the owner's sessions (score 0) and reservations
  (score: deadline, ms), for the caps. Members of sessions that expired idle are removed when the owner reaches its
  cap; the sets' own TTL is refreshed while their owner uses a session.

Redis being unreachable or losing data must not end a session this replica knows:

- Every binding this replica created or served is also kept in a local store, refreshed on use. It answers while
  Redis does not.
- A binding created, or a session ended, while Redis was unreachable is queued and written back when Redis answers
  again (`sync`, run every `SYNC_INTERVAL_SECONDS` by the app; bounded by `MAX_UNSYNCED`).
- When Redis answers "no such binding" but the local copy is live, Redis lost it (restarted empty, failed over, or
  the write never landed): the binding is written back unless a tombstone says the session ended elsewhere. A
  binding is never dropped only because Redis forgot it. Ownership does not depend on any of this: a copy is the
  same immutable binding its creator made, so restoring it gives nobody a session that was not theirs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import structlog

from gateway.redis_client import hot_path
from gateway.sessions import (
    DEFAULT_TTL_SECONDS,
    KEY_LIMIT,
    RESERVATION_SECONDS,
    TAKEN,
    TENANT_LIMIT,
    MemorySessionStore,
    Refusal,
    SessionBinding,
    SessionCaps,
)

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from gateway.net.redis_mux import RedisMux

log = structlog.get_logger("gateway.sessions")

SYNC_INTERVAL_SECONDS = 1.0
MAX_UNSYNCED = 100_000
_MAX_TOUCHED = 100_000

# Drop the members of `z` that no longer hold anything (reservations past their deadline, sessions whose binding is
# gone), but only when `z` is at its cap: the common case costs one ZCARD. A set found full after that sweep is
# marked so for a second (`<z>:full`, cleared when a place is given back): a flood of refused `initialize`s at the
# cap otherwise rescanned every member each time (0.8 ms of Redis's one thread per refusal at 2,048 sessions).
_FULL = """
local function full(z, cap, now, bprefix)
  if redis.call('ZCARD', z) < cap then return false end
  if redis.call('EXISTS', z .. ':full') == 1 then return true end
  redis.call('ZREMRANGEBYSCORE', z, 1, now)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', z, 0, 0)) do
    if redis.call('EXISTS', bprefix .. m) == 0 then redis.call('ZREM', z, m) end
  end
  if redis.call('ZCARD', z) >= cap then
    redis.call('SET', z .. ':full', '1', 'PX', 1000)
    return true
  end
  return false
end
"""

# KEYS: owner set of the principal, of the tenant
# ARGV: token, deadline ms, now ms, cap per key, cap per tenant, binding key prefix, owner set TTL ms
_RESERVE = (
    _FULL
    + """
if full(KEYS[1], tonumber(ARGV[4]), ARGV[3], ARGV[6]) then return 'key_sessions' end
if full(KEYS[2], tonumber(ARGV[5]), ARGV[3], ARGV[6]) then return 'tenant_sessions' end
redis.call('ZADD', KEYS[1], ARGV[2], '~' .. ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], '~' .. ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
return 'ok'
"""
)

# Create-only bind. KEYS: binding, tombstone, owner set of the principal, of the tenant
# ARGV: value, TTL ms, principal, member, reservation ('' = none), cap per key, cap per tenant, now ms,
#       binding key prefix, owner set TTL ms, mode ('create': a new session, clears a tombstone; 'restore': a
#       binding this replica holds and Redis lost, refused when the session ended)
_PUT = (
    _FULL
    + """
if ARGV[5] ~= '' then
  redis.call('ZREM', KEYS[3], '~' .. ARGV[5])
  redis.call('ZREM', KEYS[4], '~' .. ARGV[5])
end
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, obj = pcall(cjson.decode, cur)
  if ok and type(obj) == 'table' and obj['p'] == ARGV[3] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 'ok'
  end
  return 'taken'
end
if ARGV[11] == 'restore' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return 'ended' end
elseif ARGV[5] == '' then
  if full(KEYS[3], tonumber(ARGV[6]), ARGV[8], ARGV[9]) then return 'key_sessions' end
  if full(KEYS[4], tonumber(ARGV[7]), ARGV[8], ARGV[9]) then return 'tenant_sessions' end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('ZADD', KEYS[3], 0, ARGV[4])
redis.call('ZADD', KEYS[4], 0, ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[10])
redis.call('PEXPIRE', KEYS[4], ARGV[10])
return 'ok'
"""
)

# KEYS: binding, tombstone. ARGV: TTL ms, owner set prefix, member, principal and tenant when known ('' = read them
# from the stored binding)
_DELETE = """
local p, t = ARGV[4], ARGV[5]
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, obj = pcall(cjson.decode, cur)
  if ok and type(obj) == 'table' then
    if p == '' and type(obj['p']) == 'string' then p = obj['p'] end
    if t == '' then
      -- sessions.tenant_key(): an anonymous caller's sessions count per route
      if type(obj['t']) == 'string' then
        t = obj['t']
      elseif type(obj['s']) == 'string' then
        t = '_anonymous:' .. obj['s']
      end
    end
  end
end
if p ~= '' then
  redis.call('ZREM', ARGV[2] .. 'k:' .. p, ARGV[3])
  redis.call('DEL', ARGV[2] .. 'k:' .. p .. ':full')
end
if t ~= '' then
  redis.call('ZREM', ARGV[2] .. 't:' .. t, ARGV[3])
  redis.call('DEL', ARGV[2] .. 't:' .. t .. ':full')
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
return 1
"""


class RedisSessionStore:
    """Bindings shared by every gateway replica: one Redis key per session, idle TTL refreshed on use.

    `get` is one round trip (GETEX refreshes the TTL while reading), over the client's multiplexed hot-path
    connection when it has one (gateway/net/redis_mux.py). See the module docstring for what survives Redis failures.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        ttl: float = DEFAULT_TTL_SECONDS,
        local: MemorySessionStore | None = None,
        on_error: Callable[[str], None] | None = None,
        hot: RedisMux | None = None,
        caps: SessionCaps | None = None,
    ) -> None:
        self._redis = client
        self._hot = hot if hot is not None else hot_path(client)
        self._prefix = f"{prefix}sess:"
        self._ended = f"{prefix}sessend:"
        self._owners = f"{prefix}sessown:"
        self._ttl_ms = max(1, int(ttl * 1000))
        # an owner set outlives the idle TTL of every session in it
        self._owners_ttl_ms = self._ttl_ms + int(RESERVATION_SECONDS * 1000)
        self.caps = caps or (local.caps if local is not None else SessionCaps())
        self._local = local or MemorySessionStore(ttl, caps=self.caps)
        self._on_error = on_error  # counts failures (a metric), by operation
        # what Redis missed while unreachable: (server, id) -> (True, the binding to write back), or (False, the
        # binding if known) for a session that ended
        self._unsynced: dict[tuple[str, str], tuple[bool, SessionBinding | None]] = {}
        # principal -> when this replica last refreshed its owner sets' TTL (monotonic)
        self._touched: dict[str, float] = {}
        self._touch_every = ttl / 4
        self._background: set[asyncio.Task[Any]] = set()
        self._reserve = client.register_script(_RESERVE)
        self._put = client.register_script(_PUT)
        self._delete = client.register_script(_DELETE)

    def _key(self, server: str, session_id: str) -> str:
        return f"{self._prefix}{server}:{session_id}"

    def _failed(self, op: str, exc: Exception) -> None:
        if self._on_error is not None:
            self._on_error(op)
        log.warning("session store: redis unavailable, using local bindings", op=op, error=type(exc).__name__)

    @property
    def unsynced(self) -> int:
        """Bindings and ends waiting to be written back to Redis."""
        return len(self._unsynced)

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
            held = self._local.peek(server, session_id)
            if held is None:
                return None
            return await self._restore(server, session_id, held)
        binding = SessionBinding.from_json(raw)
        if binding is not None:
            self._local.remember(server, session_id, binding)
            self._keep_owner_sets(binding)
        return binding

    async def _restore(self, server: str, session_id: str, held: SessionBinding) -> SessionBinding | None:
        """Redis does not know a binding this replica holds: write it back, unless the session ended elsewhere."""
        try:
            got = await self._bind(server, session_id, held, None, "restore")
        except Exception as exc:
            self._failed("put", exc)
            self._queue(server, session_id, True, held)
            return held
        if got in ("ended", TAKEN):
            # ended on another replica (tombstone), or the id is bound to someone else now: the copy is stale
            self._local.forget(server, session_id)
            return None
        log.info("session binding restored to redis", server=server)
        return held

    async def _bind(
        self, server: str, session_id: str, binding: SessionBinding, reservation: str | None, mode: str
    ) -> str:
        member = f"{server}:{session_id}"
        got = await self._put(
            [
                self._key(server, session_id),
                f"{self._ended}{member}",
                f"{self._owners}k:{binding.principal}",
                f"{self._owners}t:{binding.tenant_key}",
            ],
            [
                binding.to_json(),
                self._ttl_ms,
                binding.principal,
                member,
                reservation or "",
                self.caps.per_key,
                self.caps.per_tenant,
                int(time.time() * 1000),
                self._prefix,
                self._owners_ttl_ms,
                mode,
            ],
        )
        return got.decode() if isinstance(got, bytes) else str(got)

    def _queue(self, server: str, session_id: str, is_put: bool, binding: SessionBinding | None) -> None:
        key = (server, session_id)
        if key in self._unsynced or len(self._unsynced) < MAX_UNSYNCED:
            self._unsynced[key] = (is_put, binding)
        else:
            log.warning("session store: too many bindings waiting for redis; this one stays local", server=server)

    def _keep_owner_sets(self, binding: SessionBinding) -> None:
        """Keep the owner sets of a principal that uses its sessions from expiring (once per TTL/4 per replica)."""
        now = time.monotonic()
        last = self._touched.get(binding.principal)
        if last is not None and now - last < self._touch_every:
            return
        if len(self._touched) >= _MAX_TOUCHED:
            self._touched.clear()
        self._touched[binding.principal] = now
        task = asyncio.get_running_loop().create_task(self._touch(binding))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _touch(self, binding: SessionBinding) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.pexpire(f"{self._owners}k:{binding.principal}", self._owners_ttl_ms)
                pipe.pexpire(f"{self._owners}t:{binding.tenant_key}", self._owners_ttl_ms)
                await pipe.execute()
        except Exception as exc:
            self._failed("touch", exc)

    async def reserve(self, principal: str, tenant: str, token: str) -> Refusal | None:
        deadline = int((time.time() + RESERVATION_SECONDS) * 1000)
        try:
            got = await self._reserve(
                [f"{self._owners}k:{principal}", f"{self._owners}t:{tenant}"],
                [
                    token,
                    deadline,
                    int(time.time() * 1000),
                    self.caps.per_key,
                    self.caps.per_tenant,
                    self._prefix,
                    self._owners_ttl_ms,
                ],
            )
        except Exception as exc:
            self._failed("reserve", exc)
            return await self._local.reserve(principal, tenant, token)
        got = got.decode() if isinstance(got, bytes) else str(got)
        if got == KEY_LIMIT:
            return KEY_LIMIT
        if got == TENANT_LIMIT:
            return TENANT_LIMIT
        return None

    async def release(self, principal: str, tenant: str, token: str) -> None:
        await self._local.release(principal, tenant, token)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrem(f"{self._owners}k:{principal}", f"~{token}")
                pipe.zrem(f"{self._owners}t:{tenant}", f"~{token}")
                # a place came back: the sets are no longer known full (see _FULL)
                pipe.delete(f"{self._owners}k:{principal}:full", f"{self._owners}t:{tenant}:full")
                await pipe.execute()
        except Exception as exc:  # the reservation expires by itself
            self._failed("release", exc)

    async def put(
        self, server: str, session_id: str, binding: SessionBinding, reservation: str | None = None
    ) -> Refusal | None:
        held = self._local.peek(server, session_id)
        if held is not None and held.principal != binding.principal:
            if reservation is not None:
                await self.release(binding.principal, binding.tenant_key, reservation)
            return TAKEN
        try:
            got = await self._bind(server, session_id, binding, reservation, "create")
        except Exception as exc:
            self._failed("put", exc)
            refused = await self._local.put(server, session_id, binding, reservation)
            if refused is None:
                self._queue(server, session_id, True, binding)
            return refused
        if got == TAKEN:
            return TAKEN
        if got == KEY_LIMIT:
            return KEY_LIMIT
        if got == TENANT_LIMIT:
            return TENANT_LIMIT
        self._local.remember(server, session_id, binding)
        return None

    async def delete(self, server: str, session_id: str, binding: SessionBinding | None = None) -> None:
        held = binding or self._local.peek(server, session_id)
        self._local.forget(server, session_id)
        try:
            await self._end(server, session_id, held)
        except Exception as exc:
            self._failed("delete", exc)
            # other replicas must learn it ended, or their copies would bring it back
            self._queue(server, session_id, False, held)

    async def _end(self, server: str, session_id: str, held: SessionBinding | None) -> None:
        member = f"{server}:{session_id}"
        await self._delete(
            [self._key(server, session_id), f"{self._ended}{member}"],
            [
                self._ttl_ms,
                self._owners,
                member,
                held.principal if held is not None else "",
                held.tenant_key if held is not None else "",
            ],
        )

    async def sync(self) -> int:
        """Write back what Redis missed while it was unreachable; returns how many are still waiting."""
        for key, item in list(self._unsynced.items()):
            server, session_id = key
            is_put, binding = item
            try:
                if is_put:
                    if binding is not None and self._local.peek(server, session_id) is not None:
                        got = await self._bind(server, session_id, binding, None, "restore")
                        if got in ("ended", TAKEN):
                            self._local.forget(server, session_id)
                else:
                    await self._end(server, session_id, binding)
            except Exception as exc:
                self._failed("sync", exc)
                break
            if self._unsynced.get(key) is item:  # not changed again while this one was written
                del self._unsynced[key]
        return len(self._unsynced)

    async def run_sync(self, interval: float = SYNC_INTERVAL_SECONDS) -> None:
        """The write-back loop (cancelled at shutdown)."""
        while True:
            await asyncio.sleep(interval)
            if self._unsynced:
                try:
                    left = await self.sync()
                except Exception:  # never let the loop die: the next round tries again
                    log.exception("session store: write-back failed")
                    continue
                if not left:
                    log.info("session store: bindings written back to redis")

    async def count(self) -> int:
        """Bindings this replica holds (created or served; a Redis-wide count would need a full key scan)."""
        return await self._local.count()


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # a prefetch whose request was refused before it was awaited: take its exception, if any, so asyncio does not
    # log "Future exception was never retrieved" for a Redis failure the request never needed to know about
    if not fut.cancelled():
        fut.exception()
