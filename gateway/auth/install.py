"""Wiring of identity and access: shared state (HMAC secret, JWKS caches, key store, usage counters), metrics,
the RFC 9728 metadata route and the admin key API. The filters themselves are built per snapshot by the chain.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path

import structlog
from aiohttp import web

from gateway.auth.jwks import JwksRegistry
from gateway.auth.metrics import AuthMetrics
from gateway.auth.pgkeys import KeyRepository, PostgresKeyStore
from gateway.auth.resource import protected_resource_metadata
from gateway.auth.state import AUTH, AuthState
from gateway.auth.usage import UsageFlusher, Writer
from gateway.filters.authn import API_KEY_SECRET
from gateway.metrics import METRICS
from gateway.settings import Settings

log = structlog.get_logger("gateway.auth")


def install(app: web.Application, settings: Settings) -> None:
    secret = app.get(API_KEY_SECRET)
    if secret is None:
        try:
            secret = settings.api_keys.hmac_secret.resolve(Path(settings.base_dir)).encode()
        except LookupError as exc:
            log.warning("API key secret unavailable; API keys will be refused", error=str(exc))
            secret = b""
    metrics = AuthMetrics(app[METRICS].registry)
    ak = settings.api_keys
    store: PostgresKeyStore | None = None
    if ak.postgres_store and settings.postgres.dsn:
        store = PostgresKeyStore(
            settings.postgres.dsn,
            pool_size=settings.postgres.pool_size,
            ttl=ak.cache_seconds,
            negative_ttl=ak.negative_cache_seconds,
            timeout=ak.lookup_timeout_seconds,
            on_lookup=lambda result: metrics.key_lookups.labels(result).inc(),
        )
    state = AuthState(
        hmac_secret=secret,
        public_url=settings.public_url,
        jwks=JwksRegistry(on_fetch=lambda result: metrics.jwks_fetches.labels(result).inc()),
        key_store=store,
        metrics=metrics,
    )
    app[AUTH] = state

    writer: Writer | None = None
    if store is not None:
        pg = store

        async def write(batch: Sequence[tuple[str, int, datetime]]) -> None:
            await KeyRepository(await pg.pool()).add_usage(batch)

        writer = write
    flusher = UsageFlusher(
        state.usage,
        ak.usage_flush_seconds,
        writer,
        on_flush=lambda result: metrics.usage_flushes.labels(result).inc(),
    )

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        flusher.start()
        yield
        await flusher.stop()
        await state.jwks.close()
        if store is not None:
            await store.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/.well-known/oauth-protected-resource/mcp/{server}", protected_resource_metadata)

    from gateway.admin.keys import install_routes

    install_routes(app)
