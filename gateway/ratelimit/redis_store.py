"""The Redis store: every tier and slot of one request decided by one Lua script in one round trip (EVALSHA,
reloaded on NOSCRIPT), on Redis's clock so replicas with skewed clocks still share one timeline.

The per-request EVALSHA goes over the client's multiplexed hot-path connection when it has one
(gateway/net/redis_mux.py); slot release, refresh, script loading and probes stay on redis-py.
"""

from __future__ import annotations

import hashlib
import itertools
import uuid
from collections.abc import Sequence
from importlib import resources
from typing import NamedTuple

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from gateway.net.redis_mux import RedisMux, pack
from gateway.ratelimit.gcra import SlotCheck, SlotHold, TierCheck, TierResult, Verdict, refusing_tier
from gateway.redis_client import hot_path

_US = 1_000_000.0
_MAX_PACKED = 4096  # as the rate-limit stage's plan cache: one entry per client plan


def script_source(name: str) -> str:
    return resources.files("gateway.ratelimit").joinpath("lua", name).read_text()


class PackedCall(NamedTuple):
    cmd: tuple[str | int | float, ...]
    data: bytes  # pack(cmd)


class LuaScript:
    """A script run by EVALSHA; on NOSCRIPT (Redis restarted, SCRIPT FLUSH) it is loaded again and retried once.

    With `hot`, EVALSHA goes over that multiplexed connection; SCRIPT LOAD always goes through redis-py (a loaded
    script is visible to every connection).
    """

    def __init__(self, client: aioredis.Redis, source: str, hot: RedisMux | None = None) -> None:
        self._client = client
        self._hot = hot
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def _evalsha(self, keys: Sequence[str], args: Sequence[str | int | float]) -> object:
        if self._hot is not None:
            return await self._hot.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        return await self._client.evalsha(self.sha, len(keys), *keys, *args)

    def packed(self, keys: Sequence[str], args: Sequence[str | int | float]) -> PackedCall | None:
        """This call's EVALSHA packed once, for a caller that repeats it (None without a hot-path connection)."""
        if self._hot is None:
            return None
        cmd = ("EVALSHA", self.sha, len(keys), *keys, *args)
        return PackedCall(cmd, pack(cmd))

    async def call_packed(self, call: PackedCall) -> object:
        """The call `packed()` made, sending its bytes again. They never go stale: the sha in them is the source's
        SHA1, which is also what SCRIPT LOAD answers after a NOSCRIPT."""
        hot = self._hot
        assert hot is not None  # packed() returns None without the hot-path connection
        try:
            return await hot.execute_packed(call.cmd, call.data)
        except NoScriptError:
            self.sha = await self._client.script_load(self.source)
            return await hot.execute_packed(call.cmd, call.data)

    async def __call__(self, keys: Sequence[str], args: Sequence[str | int | float]) -> object:
        hot = self._hot
        try:
            if hot is not None:  # inline, not via _evalsha: one coroutine frame less on every request
                return await hot.execute("EVALSHA", self.sha, len(keys), *keys, *args)
            return await self._client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.sha = await self._client.script_load(self.source)
            return await self._evalsha(keys, args)


class RedisLimiterStore:
    name = "redis"

    def __init__(self, client: aioredis.Redis, prefix: str, hot: RedisMux | None = None) -> None:
        self._client = client
        # the client's own hot-path connection unless one is given (None for TLS or a plain redis-py client)
        self._hot = hot if hot is not None else hot_path(client)
        self._prefix = f"{prefix}rl:"
        self._decide = LuaScript(client, script_source("decide.lua"), self._hot)
        self._refresh = LuaScript(client, script_source("refresh.lua"))
        self._seal = LuaScript(client, script_source("seal.lua"))
        # slot members are unique across replicas: a random replica id and a counter
        self._replica = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        # the packed EVALSHA of a slot-free request, per tier list: the rate-limit stage hands the same list object
        # for every request of one client plan, and packing the same KEYS and ARGV again cost ~3 us a request. Keyed
        # by id() with the list itself kept in the entry, so an id cannot be reused while its entry exists.
        self._calls: dict[int, tuple[Sequence[TierCheck], float, PackedCall]] = {}

    @property
    def prefix(self) -> str:
        return self._prefix

    def script_call(
        self, tiers: Sequence[TierCheck], slots: Sequence[SlotCheck], slot_ttl: float, member: str
    ) -> tuple[list[str], list[str | int | float]]:
        """KEYS and ARGV of decide.lua for one request."""
        p = self._prefix
        keys = [p + t.key for t in tiers]
        keys.extend(p + s.key for s in slots)
        args: list[str | int | float] = [len(tiers), len(slots), int(slot_ttl * _US), member]
        for t in tiers:
            args += [repr(t.interval * _US), repr(float(t.burst)), t.cost, "1" if t.shadow else "0"]
        args.extend(s.cap for s in slots)
        return keys, args

    def parse_result(self, tiers: Sequence[TierCheck], raw: object) -> tuple[bool, int, list[TierResult]]:
        """(admitted, 1-based index of the refusing slot or 0, per-tier results) from decide.lua's answer."""
        assert isinstance(raw, list)  # of ints: every value decide.lua returns is a Lua number, a RESP integer
        results: list[TierResult] = []
        o = 2
        for t in tiers:
            results.append(
                TierResult(
                    t.name, raw[o] == 1, raw[o + 1], raw[o + 2] / _US, raw[o + 3] / _US, t.burst, t.interval, t.shadow
                )
            )
            o += 4
        return raw[0] == 1, raw[1], results

    def _packed_call(self, tiers: Sequence[TierCheck], slot_ttl: float) -> PackedCall | None:
        entry = self._calls.get(id(tiers))
        if entry is not None and entry[0] is tiers and entry[1] == slot_ttl:
            return entry[2]
        keys, args = self.script_call(tiers, (), slot_ttl, "")
        call = self._decide.packed(keys, args)
        if call is not None:
            if len(self._calls) >= _MAX_PACKED:
                self._calls.clear()
            self._calls[id(tiers)] = (tiers, slot_ttl, call)
        return call

    async def decide(self, tiers: Sequence[TierCheck], slots: Sequence[SlotCheck], slot_ttl: float) -> Verdict:
        p = self._prefix
        call = None if slots else self._packed_call(tiers, slot_ttl)
        if call is not None:
            member = ""
            raw = await self._decide.call_packed(call)
        else:
            member = f"{self._replica}:{next(self._ids)}" if slots else ""
            keys, args = self.script_call(tiers, slots, slot_ttl, member)
            raw = await self._decide(keys, args)
        admitted, slot_idx, results = self.parse_result(tiers, raw)
        if not admitted:
            slot_refused = slots[slot_idx - 1] if slot_idx > 0 else None
            refused_by = None if slot_refused is not None else refusing_tier(results)
            return Verdict(False, results, refused_by, slot_refused=slot_refused, backend=self.name)
        hold = SlotHold(member, tuple(p + s.key for s in slots), self.name) if slots else None
        return Verdict(True, results, None, hold=hold, backend=self.name)

    async def release(self, hold: SlotHold) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for key in hold.keys:
                pipe.zrem(key, hold.member)
            await pipe.execute()

    async def refresh(self, holds: Sequence[SlotHold], slot_ttl: float) -> None:
        keys: list[str] = []
        members: list[str] = []
        for hold in holds:
            for key in hold.keys:
                keys.append(key)
                members.append(hold.member)
        for i in range(0, len(keys), 500):
            await self._refresh(keys[i : i + 500], [int(slot_ttl * _US), *members[i : i + 500]])

    async def seal(self, state: dict[str, float]) -> None:
        """Carry the in-process fallback's buckets over (key -> seconds until full): each key's TAT in Redis becomes
        at least now + that, on Redis's clock."""
        items = list(state.items())
        for i in range(0, len(items), 500):
            chunk = items[i : i + 500]
            await self._seal([self._prefix + k for k, _ in chunk], [repr(ahead * _US) for _, ahead in chunk])

    async def ping(self) -> None:
        await self._client.ping()
        # a restarted Redis has no scripts; loading here keeps the first request after recovery at one round trip
        self._decide.sha = await self._client.script_load(self._decide.source)
        if self._hot is not None:
            # reconnected now, past its backoff: the first decide after recovery must not fail on it and degrade
            await self._hot.connect()
