"""The multiplexed hot-path Redis connection (gateway/net/redis_mux.py) against real Redis servers: the shared one with
unique key prefixes, and private ones for SCRIPT FLUSH, kill/restart, pauses, AUTH/SELECT and a unix socket."""

from __future__ import annotations

import asyncio
import gc
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.exceptions import AuthenticationError, DataError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.net.redis_mux import BUSY, RedisMux
from gateway.ratelimit.backend import LimiterBackend
from gateway.ratelimit.gcra import TierCheck
from gateway.ratelimit.metrics import RateLimitMetrics
from gateway.ratelimit.redis_store import LuaScript, RedisLimiterStore
from gateway.redis_client import GatewayRedis, hot_path, make_client
from gateway.sessions import MemorySessionStore, SessionBinding
from gateway.sessions_redis import RedisSessionStore
from gateway.settings import Settings
from tests.harness import Proc, RedisInstance

pytestmark = pytest.mark.integration

B = SessionBinding("api_key:acme:k1", "srv", "http://up:1/mcp")


def mux_for(url: str, timeout: float = 1.0, max_pending: int = 10_000) -> RedisMux:
    mux = RedisMux.from_url(url, timeout=timeout, max_pending=max_pending)
    assert mux is not None
    return mux


def tier(name: str, rate: float, burst: float) -> TierCheck:
    return TierCheck(name, f"k:{name}", 1.0 / rate, burst, 1, False, shared=True)


async def until(probe: object, what: str, limit: float = 5.0) -> None:
    """Poll an async predicate until it holds (bounded; never a timing assertion)."""
    assert callable(probe)
    start = time.monotonic()
    while not await probe():
        assert time.monotonic() - start < limit, f"{what} within {limit} s"
        await asyncio.sleep(0.05)


@pytest.fixture
async def shared(redis_url: str) -> AsyncIterator[tuple[RedisMux, aioredis.Redis, str]]:
    mux = mux_for(redis_url)
    client = aioredis.Redis.from_url(redis_url, socket_timeout=1.0)
    prefix = f"mgwtest-mux:{uuid.uuid4().hex[:8]}:"
    try:
        yield mux, client, prefix
    finally:
        keys = [k async for k in client.scan_iter(f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await mux.aclose()
        await client.aclose()


async def test_concurrent_commands_get_their_own_replies(shared: tuple[RedisMux, aioredis.Redis, str]) -> None:
    mux, client, prefix = shared
    n = 600
    await client.mset({f"{prefix}k{i}": f"v{i}" for i in range(0, n, 3)})

    async def one(i: int) -> None:
        kind = i % 3
        if kind == 0:
            assert await mux.execute("GETEX", f"{prefix}k{i}", "PX", 60_000) == f"v{i}".encode()
        elif kind == 1:
            assert await mux.execute("GETEX", f"{prefix}missing{i}", "PX", 60_000) is None
        else:
            reply = await mux.execute("EVAL", "return {tonumber(ARGV[1]), ARGV[2]}", 0, i, f"a{i}")
            assert reply == [i, f"a{i}".encode()]

    await asyncio.gather(*(one(i) for i in range(n)))
    assert 0 < await client.pttl(f"{prefix}k0") <= 60_000  # GETEX refreshed the TTL


async def test_commands_of_one_iteration_are_queued_together(shared: tuple[RedisMux, aioredis.Redis, str]) -> None:
    mux, _, _ = shared
    await mux.connect()
    conn = mux._conn
    assert conn is not None and conn._transport is not None
    transport = conn._transport
    writes: list[bytes] = []
    real_write = transport.write

    def counting_write(data: bytes) -> None:
        writes.append(data)
        real_write(data)

    cast(Any, transport).write = counting_write
    try:
        futures = [mux.execute("ECHO", i) for i in range(32)]
        assert writes == []  # nothing written yet: the 32 go out in one write when the loop turns
        assert mux.in_flight == 32
        assert await asyncio.gather(*futures) == [str(i).encode() for i in range(32)]
        assert len(writes) == 1 and writes[0].count(b"ECHO") == 32
        assert mux.in_flight == 0
    finally:
        cast(Any, transport).write = real_write


async def test_error_replies_and_bad_arguments(shared: tuple[RedisMux, aioredis.Redis, str]) -> None:
    mux, _, prefix = shared
    with pytest.raises(NoScriptError):
        await mux.execute("EVALSHA", "0" * 40, 0)
    with pytest.raises(ResponseError) as err:
        await mux.execute("NOSUCHCOMMAND")
    assert type(err.value) is ResponseError
    with pytest.raises(DataError):
        await mux.execute("GET", True)  # type: ignore[arg-type]
    # nested error replies stay in the array, as with redis-py
    nested = await mux.execute("EVAL", "return {1, redis.error_reply('inner')}", 0)
    assert nested[0] == 1 and isinstance(nested[1], ResponseError)
    # and none of it disturbed the order of later replies
    assert await mux.execute("ECHO", f"{prefix}after") == f"{prefix}after".encode()


async def test_a_cancelled_caller_does_not_shift_replies(shared: tuple[RedisMux, aioredis.Redis, str]) -> None:
    mux, _, _ = shared
    await mux.connect()
    first = asyncio.ensure_future(mux.execute("ECHO", "first"))
    second = mux.execute("ECHO", "second")
    first.cancel()
    assert await second == b"second"
    assert await mux.execute("ECHO", "third") == b"third"


async def test_too_many_in_flight_is_pool_exhaustion(redis_url: str) -> None:
    mux = mux_for(redis_url, max_pending=5)
    try:
        await mux.connect()
        futures = [mux.execute("PING") for _ in range(5)]
        with pytest.raises(RedisConnectionError) as err:
            mux.execute("PING")
        assert str(err.value) == BUSY
        assert await asyncio.gather(*futures) == [b"PONG"] * 5
        assert await mux.execute("PING") == b"PONG"  # room again once replies came back
    finally:
        await mux.aclose()


async def test_limiter_store_and_session_store_over_the_mux(shared: tuple[RedisMux, aioredis.Redis, str]) -> None:
    mux, client, prefix = shared
    store = RedisLimiterStore(client, prefix, hot=mux)
    # each request has its own key and burst: a reply given to the wrong request would show a wrong remaining
    tiers = [TierCheck(f"t{i}", f"k:{i}", 1.0, float(i + 2), 1, False, shared=True) for i in range(100)]
    verdicts = await asyncio.gather(*(store.decide([t], [], 0) for t in tiers))
    for t, v in zip(tiers, verdicts, strict=True):
        assert v.allowed and v.backend == "redis"
        assert v.tiers[0].remaining == int(t.burst) - 1, (t, v.tiers[0])

    sessions = RedisSessionStore(client, prefix, hot=mux)
    for i in range(1, 100, 2):
        await sessions.put("srv", f"s{i}", B)
    got = await asyncio.gather(*(sessions.get("srv", f"s{i}" if i % 2 else f"gone{i}") for i in range(100)))
    assert got == [B if i % 2 else None for i in range(100)]
    assert 0 < await client.pttl(f"{prefix}sess:srv:s1") <= 3_600_000


async def test_script_flush_reloads_and_retries(private_redis: RedisInstance) -> None:
    mux = mux_for(private_redis.url)
    client = aioredis.Redis.from_url(private_redis.url)
    script = LuaScript(client, "return ARGV[1]", mux)
    try:
        assert await asyncio.gather(*(script([], [i]) for i in range(50))) == [str(i).encode() for i in range(50)]
        await client.script_flush()
        with pytest.raises(NoScriptError):
            await mux.execute("EVALSHA", script.sha, 0, "x")
        assert await script([], ["again"]) == b"again"
        stats = await client.info("commandstats")
        assert stats["cmdstat_script|load"]["calls"] >= 2  # the first call and the one after the flush
    finally:
        await mux.aclose()
        await client.aclose()


async def test_redis_killed_fails_pending_and_new_commands_then_recovers(private_redis: RedisInstance) -> None:
    mux = mux_for(private_redis.url, timeout=5.0)
    try:
        assert await mux.execute("PING") == b"PONG"
        # BLPOP waits in Redis: it is in flight when the server dies
        pending = asyncio.ensure_future(mux.execute("BLPOP", f"mgwtest-mux:{uuid.uuid4().hex}", 4))
        await until(lambda: _in_flight(mux, 1), "BLPOP sent")
        private_redis.stop()
        with pytest.raises(RedisConnectionError):
            await pending
        for _ in range(3):  # refused, then refused from the backoff without a connect attempt per command
            with pytest.raises(RedisConnectionError):
                await mux.execute("PING")
        assert not mux.connected
        private_redis.start()

        async def answers() -> bool:
            try:
                return bool(await mux.execute("PING") == b"PONG")
            except RedisConnectionError:
                return False

        await until(answers, "reconnected after the restart")
        assert mux.connected
    finally:
        await mux.aclose()


async def _in_flight(mux: RedisMux, n: int) -> bool:
    return mux.in_flight >= n


async def test_connect_ignores_the_backoff(private_redis: RedisInstance) -> None:
    mux = mux_for(private_redis.url)
    try:
        private_redis.stop()
        with pytest.raises(RedisConnectionError):
            await mux.execute("PING")
        private_redis.start()
        await mux.connect()  # what the limiter's probe does once Redis answers it again
        assert await mux.execute("PING") == b"PONG"
    finally:
        await mux.aclose()


async def test_late_replies_time_out_and_the_connection_resyncs(private_redis: RedisInstance) -> None:
    mux = mux_for(private_redis.url, timeout=0.2)
    admin = aioredis.Redis.from_url(private_redis.url)
    try:
        assert await mux.execute("PING") == b"PONG"
        await admin.execute_command("CLIENT", "PAUSE", 1000, "ALL")
        results = await asyncio.gather(*(mux.execute("ECHO", i) for i in range(10)), return_exceptions=True)
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        assert not mux.connected  # dropped: its late replies would have answered later commands
        await admin.execute_command("CLIENT", "UNPAUSE")

        async def in_sync() -> bool:
            tag = uuid.uuid4().hex
            try:
                reply = await mux.execute("ECHO", tag)
            except (RedisTimeoutError, RedisConnectionError):
                return False
            assert reply == tag.encode()  # never an answer meant for an earlier command
            return True

        await until(in_sync, "answering in order again")
        got = await asyncio.gather(*(mux.execute("ECHO", i) for i in range(20)))
        assert got == [str(i).encode() for i in range(20)]
    finally:
        await mux.aclose()
        await admin.aclose()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_stalled_event_loop_is_not_a_late_reply(redis_url: str, loop: str) -> None:
    """The reply arrived while the loop was blocked: it is read, not timed out, whichever order the loop runs due
    timers and socket reads in."""
    import uvloop

    async def main() -> None:
        mux = mux_for(redis_url, timeout=0.1)
        try:
            await mux.connect()
            fut = mux.execute("ECHO", "on time")
            await asyncio.sleep(0)  # the write goes out
            time.sleep(0.3)  # noqa: ASYNC251 -- the point: block the loop past the deadline while Redis answers
            assert await fut == b"on time"
            assert mux.connected
        finally:
            await mux.aclose()

    (uvloop.run if loop == "uvloop" else asyncio.run)(main())


async def test_auth_and_select_from_the_url(private_redis: RedisInstance) -> None:
    admin = aioredis.Redis.from_url(private_redis.url)
    await admin.config_set("requirepass", "s3cret")
    admin_pw = aioredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{private_redis.port}/3")
    await admin_pw.execute_command("ACL", "SETUSER", "alice", "on", ">alicepw", "~*", "+@all")
    key = f"mgwtest-mux:{uuid.uuid4().hex}"
    muxes = [
        mux_for(f"redis://:s3cret@127.0.0.1:{private_redis.port}/3"),
        mux_for(f"redis://alice:alicepw@127.0.0.1:{private_redis.port}/3"),
    ]
    wrong = mux_for(f"redis://:nope@127.0.0.1:{private_redis.port}/3")
    try:
        for i, mux in enumerate(muxes):
            assert await mux.execute("SET", f"{key}:{i}", "v") == b"OK"
            assert await admin_pw.get(f"{key}:{i}") == b"v"  # in db 3...
            assert await mux.execute("GETEX", f"{key}:{i}", "PX", 1000) == b"v"
        assert await admin_pw.execute_command("SELECT", 0)
        assert await admin_pw.exists(f"{key}:0") == 0  # ...not db 0
        with pytest.raises(AuthenticationError):
            await wrong.execute("PING")
        assert not wrong.connected
    finally:
        for mux in [*muxes, wrong]:
            await mux.aclose()
        await admin_pw.aclose()
        await admin.aclose()


@pytest.fixture
def unix_redis(tmp_path: Path) -> Iterator[Path]:
    exe = shutil.which("redis-server")
    assert exe is not None, "redis-server is not installed"
    sock = tmp_path / "redis.sock"
    argv = [exe, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    proc = Proc(argv, tmp_path / "redis-unix.log").start()
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline, "redis-server did not create its socket"
            time.sleep(0.02)
        yield sock
    finally:
        proc.kill()


async def test_unix_socket_url(unix_redis: Path) -> None:
    mux = mux_for(f"unix://{unix_redis}?db=2")
    try:
        assert await mux.execute("SET", "k", "v") == b"OK"
        assert await mux.execute("CLIENT", "INFO") is not None
        info = (await mux.execute("CLIENT", "INFO")).decode()
        assert " db=2 " in info
    finally:
        await mux.aclose()


def test_tls_and_plain_clients_stay_on_redis_py() -> None:
    assert RedisMux.from_url("rediss://127.0.0.1:6380/0", timeout=0.25, max_pending=10) is None
    tls = make_client(Settings.model_validate({"redis": {"url": "rediss://127.0.0.1:6380/0"}}))
    assert isinstance(tls, GatewayRedis) and hot_path(tls) is None
    plain = make_client(Settings.model_validate({"redis": {"url": "redis://127.0.0.1:6379/0"}}))
    assert isinstance(plain, GatewayRedis) and isinstance(hot_path(plain), RedisMux)
    assert hot_path(aioredis.Redis()) is None


def test_multiplex_off_keeps_the_request_path_on_redis_py() -> None:
    off = make_client(Settings.model_validate({"redis": {"url": "redis://127.0.0.1:6379/0", "multiplex": False}}))
    assert isinstance(off, GatewayRedis) and hot_path(off) is None


async def test_limiter_over_the_mux_falls_back_and_returns(private_redis: RedisInstance) -> None:
    client = make_client(Settings.model_validate({"redis": {"url": private_redis.url, "pool_size": 10}}))
    assert client is not None and hot_path(client) is not None
    registry = CollectorRegistry()
    backend = LimiterBackend(RedisLimiterStore(client, "mgw:"), RateLimitMetrics(registry))
    backend.probe_interval = 0.1
    t = tier("global", 1000, 50)
    try:
        assert (await backend.decide([t], [], 0)).backend == "redis"
        private_redis.stop()
        verdicts = await asyncio.gather(*(backend.decide([t], [], 0) for _ in range(20)))
        assert {v.backend for v in verdicts} == {"fallback"}  # every request was decided, in process
        assert backend.degraded
        private_redis.start()

        async def back() -> bool:
            return await backend.probe_once() or not backend.degraded

        await until(back, "probe found Redis again")
        # the probe reconnected the hot path: the next request does not meet its backoff and degrade again
        assert (await backend.decide([t], [], 0)).backend == "redis"
        assert not backend.degraded
    finally:
        hot = hot_path(client)
        assert hot is not None
        await hot.aclose()
        await client.aclose()


async def test_limiter_queue_full_is_decided_locally(
    redis_url: str, shared: tuple[RedisMux, aioredis.Redis, str]
) -> None:
    _, client, prefix = shared  # the shared fixture cleans the prefix up; this test needs its own small mux
    mux = mux_for(redis_url, max_pending=3)
    registry = CollectorRegistry()
    backend = LimiterBackend(RedisLimiterStore(client, prefix, hot=mux), RateLimitMetrics(registry))
    try:
        await mux.connect()
        verdicts = await asyncio.gather(*(backend.decide([tier("global", 1000, 1000)], [], 0) for _ in range(30)))
        assert {v.backend for v in verdicts} == {"redis", "fallback"}
        assert not backend.degraded
        errors = registry.get_sample_value("mcp_gateway_ratelimit_store_errors_total", {"operation": "pool_exhausted"})
        assert errors is not None and errors > 0
    finally:
        await mux.aclose()


async def test_session_store_over_the_mux_survives_redis_going_away(private_redis: RedisInstance) -> None:
    client = aioredis.Redis.from_url(private_redis.url, socket_timeout=0.3, socket_connect_timeout=0.3)
    mux = mux_for(private_redis.url, timeout=0.3)
    errors: list[str] = []
    store = RedisSessionStore(client, "t:", local=MemorySessionStore(), on_error=errors.append, hot=mux)
    try:
        await store.put("srv", "mine", B)
        assert await store.get("srv", "mine") == B
        private_redis.stop()
        assert await store.get("srv", "mine") == B  # from the local copy
        assert await store.get("srv", "mine") == B  # again, now refused by the backoff
        assert errors.count("get") == 2
        private_redis.start()

        async def served_by_redis() -> bool:
            n = errors.count("get")
            await store.get("srv", "nothing-here")
            return errors.count("get") == n

        await until(served_by_redis, "GETEX over the mux again")
    finally:
        await mux.aclose()
        await client.aclose()


async def test_session_prefetch_is_finished_by_get_or_harmless_when_abandoned(private_redis: RedisInstance) -> None:
    """The lookup routing finishes (`get(..., pending)`) answers like a plain `get`; one a refused request abandons
    leaves no 'exception never retrieved' behind, even when Redis dies under it."""
    mux = mux_for(private_redis.url, timeout=5.0)
    client = aioredis.Redis.from_url(private_redis.url)
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        sessions = RedisSessionStore(client, "mgwtest-prefetch:", hot=mux)
        assert sessions.prefetch("srv", "s1") is None  # not connected yet: nothing to overlap, plain get instead
        await sessions.put("srv", "s1", B)
        assert await mux.execute("PING") == b"PONG"
        pending = sessions.prefetch("srv", "s1")
        assert pending is not None
        assert await sessions.get("srv", "s1", pending) == B
        gone = sessions.prefetch("srv", "nope")
        assert gone is not None and await sessions.get("srv", "nope", gone) is None
        assert MemorySessionStore().prefetch("srv", "s1") is None

        abandoned = sessions.prefetch("srv", "s1")  # never awaited, as after a 429
        assert abandoned is not None
        private_redis.stop()
        box: list[Any] = [abandoned]
        del abandoned

        async def failed() -> bool:
            return bool(box[0].done())

        await until(failed, "the abandoned lookup failed with the connection")
        box.clear()  # the last reference: collected here, where an unretrieved exception would be reported
        gc.collect()
        await asyncio.sleep(0)
        assert not [c for c in reported if "never retrieved" in str(c.get("message"))], reported
    finally:
        loop.set_exception_handler(None)
        await mux.aclose()
        await client.aclose()
