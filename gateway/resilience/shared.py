"""Breaker state shared between gateway replicas through Redis: a CAS script for changes, pub/sub to spread them.

What touches Redis, and when:
  * a replica's own transition (a trip, mostly) is written with the `set` op in a background task and published;
    the request that caused it never waits for Redis;
  * every replica listens on the channel and adopts any newer generation within milliseconds (so OPEN reaches
    all replicas well within a second);
  * only when a breaker is past its open period or half-open does a request await one script call (`acquire`),
    which hands out the N probe slots atomically across replicas. A closed breaker never costs a round trip.

When Redis is unreachable (listener disconnected, or a call failed in the last second) `available` is False and
every breaker decides alone, as in embedded mode; the listener reconnects by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog

from gateway.loophold import background
from gateway.net.pubsub import RedisSubscriber
from gateway.resilience.script import BREAKER_LUA
from gateway.resilience.state import Admission, CircuitBreaker, State, Transition

log = structlog.get_logger("gateway.resilience.shared")

_STATES = {s.value: s for s in State}
# after a failed call, this replica stops asking Redis for this long (no added latency while it is down)
DOWN_BACKOFF_SECONDS = 1.0
RECONNECT_SECONDS = 0.5


class RedisBreakerStore:
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        lookup: Callable[[str], CircuitBreaker | None],
        *,
        call_timeout: float = 0.5,
        on_availability: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self.channel = f"{prefix}breaker:events"
        self._lookup = lookup
        self._timeout = call_timeout
        self._clock = clock
        self._script = client.register_script(BREAKER_LUA)
        self._subscribed = False
        self._down_until = 0.0
        self._listener = RedisSubscriber(
            client,
            self.channel,
            self._on_message,
            name="breaker-pubsub",
            reconnect_seconds=RECONNECT_SECONDS,
            on_state=self._set_subscribed,
        )
        self._pending: set[asyncio.Task[Any]] = set()
        self._on_availability = on_availability
        self._adopting = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def available(self) -> bool:
        return self._subscribed and self._clock() >= self._down_until

    @property
    def adopting(self) -> bool:
        """True while a remote state is being applied (so the registry does not echo it back)."""
        return self._adopting

    def start(self) -> None:
        self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()
        for task in list(self._pending):
            task.cancel()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    def _set_subscribed(self, value: bool) -> None:
        if value != self._subscribed:
            self._subscribed = value
            log.info("breaker shared state", available=value)
            if self._on_availability is not None:
                self._on_availability(value)

    def _on_message(self, data: bytes | str) -> None:
        try:
            msg = orjson.loads(data)
            name = str(msg["k"])
            state = _STATES[msg["s"]]
            gen = int(msg["g"])
            remaining = float(msg["r"]) / 1000.0
            trips = int(msg["t"])
            reason = str(msg.get("why", "shared"))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("ignoring malformed breaker event")
            return
        breaker = self._lookup(name)
        if breaker is not None:
            self._adopt(breaker, state, gen, remaining, trips, reason)

    def _adopt(
        self,
        breaker: CircuitBreaker,
        state: State,
        gen: int,
        remaining: float,
        trips: int,
        reason: str,
        *,
        force: bool = False,
    ) -> None:
        self._adopting = True
        try:
            if force and gen == breaker.gen and state is not breaker.state:
                breaker.gen -= 1  # same generation decided differently elsewhere: Redis's version is the truth
            breaker.adopt(state, gen, remaining, trips, self._clock(), reason)
        finally:
            self._adopting = False

    # ------------------------------------------------------------------ script calls

    def _key(self, breaker: CircuitBreaker) -> str:
        return f"{self._prefix}breaker:{breaker.key}"

    async def _call(self, breaker: CircuitBreaker, *args: Any) -> tuple[State, int, float, int, bool] | None:
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._script(
                    keys=[self._key(breaker)], args=[args[0], self.channel, breaker.key, *args[1:]]
                )
        except Exception as exc:
            # also TimeoutError: Redis that does not answer is down for our purposes
            self._down_until = self._clock() + DOWN_BACKOFF_SECONDS
            log.warning("breaker shared state call failed; deciding locally", op=args[0], error=type(exc).__name__)
            return None
        state = _STATES[raw[0].decode() if isinstance(raw[0], bytes) else str(raw[0])]
        return state, int(raw[1]), float(raw[2]) / 1000.0, int(raw[3]), bool(int(raw[4]))

    async def acquire(self, breaker: CircuitBreaker) -> Admission:
        """Ask Redis for a probe slot. Falls back to the local decision if Redis fails."""
        p = breaker.policy
        res = await self._call(breaker, "acquire", p.half_open_probes, int(p.probe_timeout_seconds * 1000))
        if res is not None and res[1] < breaker.gen:
            # Redis does not know our state (restarted, key evicted, or we tripped while it was down): write
            # ours, then ask again; otherwise this breaker would wait forever for a half-open Redis never enters
            remaining = max(0.0, breaker.open_until - self._clock()) if breaker.state is State.OPEN else 0.0
            await self._call(
                breaker, "set", breaker.gen - 1, breaker.state.value, int(remaining * 1000), breaker.trips, "resync"
            )
            res = await self._call(breaker, "acquire", p.half_open_probes, int(p.probe_timeout_seconds * 1000))
        if res is None:
            return breaker.admit_probe_locally(self._clock())
        state, gen, remaining, trips, granted = res
        self._adopt(breaker, state, gen, remaining, trips, "shared", force=True)
        if state is State.CLOSED:
            return Admission(True, breaker.gen)
        if granted:
            return Admission(True, gen, probe=True)
        wait = remaining if state is State.OPEN else max(1.0, min(p.slow_call_seconds, p.open_seconds))
        return Admission(False, gen, retry_after=wait)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(background(coro, "breaker-sync"))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def push(self, breaker: CircuitBreaker, tr: Transition) -> None:
        """Write a local transition (fire and forget); a newer state found in Redis is adopted instead."""
        if not self.available:
            return
        open_ms = int(tr.open_seconds * 1000)
        self._spawn(self._push(breaker, tr.gen - 1, tr.new.value, open_ms, tr.trips, tr.reason))

    async def _push(
        self, breaker: CircuitBreaker, expected: int, state: str, open_ms: int, trips: int, why: str
    ) -> None:
        res = await self._call(breaker, "set", expected, state, open_ms, trips, why)
        if res is not None and not res[4]:
            self._adopt(breaker, res[0], res[1], res[2], res[3], "shared", force=True)

    def report_probe(self, breaker: CircuitBreaker, gen: int, ok: bool) -> None:
        """A probe's outcome decides the round in Redis; if Redis fails, the local machine decides."""
        self._spawn(self._report(breaker, gen, ok))

    async def _report(self, breaker: CircuitBreaker, gen: int, ok: bool) -> None:
        p = breaker.policy
        res = await self._call(
            breaker,
            "result",
            gen,
            "1" if ok else "0",
            p.half_open_probes,
            int(p.open_seconds * 1000),
            p.backoff_multiplier,
            int(p.max_open_seconds * 1000),
        )
        if res is None:
            breaker.record(gen, True, not ok, False, self._clock())
            return
        self._adopt(breaker, res[0], res[1], res[2], res[3], "shared")

    def release(self, breaker: CircuitBreaker, gen: int) -> None:
        self._spawn(self._call(breaker, "release", gen))

    def expedite(self, breaker: CircuitBreaker) -> None:
        if self.available:
            self._spawn(self._call(breaker, "expedite"))
