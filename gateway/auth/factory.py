"""Factory of identity and access: shared state (HMAC secret, JWKS caches, key store, usage counters), metrics,
and its lifecycle (the usage flusher). The filters are built per snapshot by gateway/compose.py; the RFC 9728
metadata route and the admin key API are added by gateway/app.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry

from gateway.auth.jwks import JwksRegistry
from gateway.auth.metrics import AuthMetrics
from gateway.auth.pgkeys import KeyRepository, PostgresKeyStore
from gateway.auth.state import AuthState
from gateway.auth.usage import UsageFlusher, Writer
from gateway.lifecycle import Lifecycle
from gateway.oauth.factory import build_access_tokens
from gateway.settings import Settings

log = structlog.get_logger("gateway.auth")


def build_auth(settings: Settings, registry: CollectorRegistry) -> tuple[AuthState, Lifecycle]:
    # resolved once, here: the filters and the admin API get it through the state
    try:
        secret = settings.api_keys.hmac_secret.resolve(Path(settings.base_dir)).encode()
    except LookupError as exc:
        log.warning("API key secret unavailable; API keys will be refused", error=str(exc))
        secret = b""
    metrics = AuthMetrics(registry)
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
        oauth_tokens=build_access_tokens(settings),
    )

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

    async def start() -> None:
        flusher.start()

    async def stop() -> None:
        await flusher.stop()
        await state.jwks.close()
        if store is not None:
            await store.close()

    return state, Lifecycle("auth", start, stop)
