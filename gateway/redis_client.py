"""The one shared redis.asyncio client (BlockingConnectionPool), or None when Redis is not configured.

Subsystems (limiter, sessions, breaker state) read `app[REDIS]`; they must treat every Redis error as 'Redis is
down' and degrade as their issue says (never a 5xx because Redis is gone).

The client carries the hot-path connection (`GatewayRedis.hot`, gateway/redis_mux.py) used for the two commands
every proxied call makes (the limiter's EVALSHA, the session GETEX): stores get it with the client they are already
handed, and fall back to redis-py when it is absent (TLS, or a plain client in tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from gateway.ops import add_readiness_check
from gateway.redis_mux import RedisMux
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


REDIS: web.AppKey[RedisHolder] = web.AppKey("redis", RedisHolder)


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
    client.hot = RedisMux.from_url(
        url,
        timeout=settings.redis.socket_timeout,
        max_pending=settings.redis.pool_size * HOT_PENDING_PER_POOL_CONNECTION,
    )
    return client


def install_redis(app: web.Application, settings: Settings) -> None:
    holder = RedisHolder(make_client(settings), settings.redis.key_prefix)
    app[REDIS] = holder

    if holder.client is not None:
        client = holder.client

        async def check() -> str | None:
            try:
                await client.ping()
            except Exception as exc:
                return f"redis: {type(exc).__name__}"
            return None

        # not required: without Redis the gateway falls back to its in-process stores (degraded, still serving)
        add_readiness_check(app, "redis", check, required=False)

    async def ctx(_: web.Application) -> AsyncIterator[None]:
        hot = holder.hot
        if hot is not None:
            # connected before the first request, so it does not pay for the handshake; Redis down is no reason
            # not to start (the first commands reconnect)
            with contextlib.suppress(RedisError, OSError):
                await hot.connect()
        yield
        if hot is not None:
            await hot.aclose()
        if holder.client is not None:
            await holder.client.aclose()

    app.cleanup_ctx.append(ctx)
