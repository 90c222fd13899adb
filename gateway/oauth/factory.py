"""Factories of the built-in authorization server: the access-token signer/verifier (which authn needs, so it
lives in the auth state) and the server itself with its store, limits and lifecycle. Both None when
`oauth.enabled` is false: then no OAuth path exists and no route accepts its tokens."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from gateway.auth.pgkeys import PostgresKeyStore
from gateway.clientip import ClientIpResolver
from gateway.lifecycle import Lifecycle
from gateway.oauth.keys import KeyResolver
from gateway.oauth.limits import AddressLimiter
from gateway.oauth.pgstore import PostgresStore
from gateway.oauth.server import OAuthServer
from gateway.oauth.signing import from_pem, load_or_create
from gateway.oauth.store import MemoryStore, OAuthStore
from gateway.oauth.tokens import AccessTokens
from gateway.policy.snapshot import Snapshot
from gateway.settings import Settings

log = structlog.get_logger("gateway.oauth")
PRUNE_SECONDS = 3600.0


def issuer_of(settings: Settings) -> str:
    return settings.oauth.issuer or settings.public_url


def build_access_tokens(settings: Settings) -> AccessTokens | None:
    cfg = settings.oauth
    if not cfg.enabled:
        return None
    base = Path(settings.base_dir)
    if cfg.signing_key is not None:
        key = from_pem(cfg.signing_key.resolve(base).encode())
    else:
        key = load_or_create(settings.path(cfg.signing_key_path))
    return AccessTokens(key, issuer_of(settings), cfg.access_token_seconds)


@dataclass(frozen=True, slots=True)
class OAuthService:
    server: OAuthServer
    client_ip: ClientIpResolver
    register_limit: AddressLimiter
    token_limit: AddressLimiter
    authorize_limit: AddressLimiter
    secure_cookies: bool


def build_oauth(
    settings: Settings,
    tokens: AccessTokens | None,
    hmac_secret: bytes,
    key_store: PostgresKeyStore | None,
    snapshot: Callable[[], Snapshot | None],
) -> tuple[OAuthService | None, Lifecycle]:
    cfg = settings.oauth
    if tokens is None:
        return None, Lifecycle("oauth")
    store: OAuthStore
    pg: PostgresStore | None = None
    if settings.postgres.dsn:
        pg = PostgresStore(settings.postgres.dsn, pool_size=min(settings.postgres.pool_size, 4))
        store = pg
    else:
        if settings.workers > 1:
            log.warning("oauth: workers > 1 without postgres.dsn; each worker keeps its own codes and tokens")
        store = MemoryStore()
    server = OAuthServer(
        cfg, tokens.issuer, settings.public_url, store, tokens, KeyResolver(hmac_secret, key_store, snapshot), snapshot
    )
    service = OAuthService(
        server=server,
        client_ip=ClientIpResolver(settings.http.trusted_proxies),
        register_limit=AddressLimiter(cfg.register_per_minute),
        token_limit=AddressLimiter(cfg.token_per_minute),
        authorize_limit=AddressLimiter(cfg.authorize_per_minute),
        secure_cookies=tokens.issuer.startswith("https://"),
    )
    pruner: asyncio.Task[None] | None = None

    async def prune_forever() -> None:
        assert pg is not None
        while True:
            with contextlib.suppress(Exception):
                await pg.prune(cfg.unclaimed_client_seconds)
            await asyncio.sleep(PRUNE_SECONDS)

    async def start() -> None:
        nonlocal pruner
        log.info("oauth authorization server on", issuer=tokens.issuer, store="postgres" if pg else "memory")
        if pg is not None:
            pruner = asyncio.create_task(prune_forever(), name="oauth-prune")

    async def stop() -> None:
        if pruner is not None:
            pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pruner
        await store.close()

    return service, Lifecycle("oauth", start, stop)
