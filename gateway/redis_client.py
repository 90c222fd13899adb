"""The one shared redis.asyncio client (BlockingConnectionPool), or None when Redis is not configured.

Subsystems (limiter, sessions, breaker state) are handed the holder by gateway/compose.py; they must treat every
Redis error as 'Redis is down' and degrade as their issue says (never a 5xx because Redis is gone).

The client carries the hot-path connection (`GatewayRedis.hot`, gateway/net/redis_mux.py) used for the two commands
every proxied call makes (the limiter's EVALSHA, the session GETEX): stores get it with the client they are already
handed, and fall back to redis-py when it is absent (`redis.multiplex: false`, TLS, or a plain client in tests).
"""

from __future__ import annotations

import contextlib

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from gateway.lifecycle import Lifecycle
from gateway.net.redis_mux import RedisMux
from gateway.probes import ReadinessCheck
from gateway.settings import Settings

log = structlog.get_logger("gateway.redis")


# commands allowed in flight on the hot-path connection per pooled redis-py connection: it pipelines, so it needs
# far more than the pool does, but a stalled Redis must not queue requests without bound
HOT_PENDING_PER_POOL_CONNECTION = 64


class GatewayRedis(aioredis.Redis):
    """redis-py's client plus the multiplexed connection for hot-path commands (None: use redis-py for them)."""

    hot: RedisMux | None = None


def hot_path(client: aioredis.Redis) -> RedisMux | None:
    return client.hot if isinstance(client, GatewayRedis) else None


class RedisHolder:
    """Holds the client (None = embedded mode). A holder, not the client, so the AppKey exists in both modes."""

    def __init__(self, client: aioredis.Redis | None, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    @property
    def enabled(self) -> bool:
        return self.client is not None

    @property
    def hot(self) -> RedisMux | None:
        return hot_path(self.client) if self.client is not None else None


def make_client(settings: Settings) -> aioredis.Redis | None:
    url = settings.redis.url
    if not url:
        return None
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis.pool_size,
        timeout=settings.redis.socket_timeout,  # wait for a free connection at most this long
        socket_timeout=settings.redis.socket_timeout,
        socket_connect_timeout=settings.redis.socket_timeout,
        health_check_interval=0,
        retry_on_timeout=False,
    )
    client = GatewayRedis(connection_pool=pool)
    if not settings.redis.multiplex:
        return client  # the request path's commands go through redis-py's pool like every other command
    client.hot = RedisMux.from_url(
        url,
        timeout=settings.redis.socket_timeout,
        max_pending=settings.redis.pool_size * HOT_PENDING_PER_POOL_CONNECTION,
    )
    return client


def build_redis(settings: Settings) -> tuple[RedisHolder, Lifecycle]:
    """The shared client (or none, embedded mode) and its lifecycle: the hot-path connection is opened before the
    first request, so it does not pay for the handshake; Redis down is no reason not to start."""
    holder = RedisHolder(make_client(settings), settings.redis.key_prefix)

    async def start() -> None:
        hot = holder.hot
        if hot is not None:
            with contextlib.suppress(RedisError, OSError):
                await hot.connect()

    async def stop() -> None:
        hot = holder.hot
        if hot is not None:
            await hot.aclose()
        if holder.client is not None:
            await holder.client.aclose()

    return holder, Lifecycle("redis", start, stop)


def redis_readiness(holder: RedisHolder) -> ReadinessCheck | None:
    """The /readyz check of a configured Redis; not required: without Redis the gateway falls back to its
    in-process stores (degraded, still serving)."""
    client = holder.client
    if client is None:
        return None

    async def check() -> str | None:
        try:
            await client.ping()
        except Exception as exc:
            return f"redis: {type(exc).__name__}"
        return None

    return check
