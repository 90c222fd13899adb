"""The one shared redis.asyncio client (BlockingConnectionPool), or None when Redis is not configured.

Subsystems (limiter, sessions, breaker state) read `app[REDIS]`; they must treat every Redis error as 'Redis is
down' and degrade as their issue says (never a 5xx because Redis is gone).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import structlog
from aiohttp import web

from gateway.ops import add_readiness_check
from gateway.settings import Settings

log = structlog.get_logger("gateway.redis")


class RedisHolder:
    """Holds the client (None = embedded mode). A holder, not the client, so the AppKey exists in both modes."""

    def __init__(self, client: aioredis.Redis | None, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    @property
    def enabled(self) -> bool:
        return self.client is not None


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
    return aioredis.Redis(connection_pool=pool)


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
        yield
        if holder.client is not None:
            await holder.client.aclose()

    app.cleanup_ctx.append(ctx)
