"""JWKS: signing keys fetched over HTTP with aiohttp, cached, refreshed in the background when stale and on
demand for an unknown `kid` (at most once per `min_refresh` seconds). State is keyed by URL and lives outside the
policy snapshot, so a reload keeps the fetched keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import orjson
import structlog

from gateway.loophold import background
from gateway.redact import display_url

log = structlog.get_logger("gateway.auth.jwks")

MAX_JWKS_BYTES = 1024 * 1024
FetchHook = Callable[[str], None]  # called with "ok" / "error" after every fetch (metrics)


# the key type each algorithm family needs (RFC 7518)
_KTY = {"HS": "oct", "RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


def _compatible(jwk: dict[str, Any], alg: str) -> bool:
    """Whether a JWK may verify a token of `alg`: signature use, its `alg` (if it fixes one), its key type."""
    if jwk.get("use") not in (None, "sig") or jwk.get("alg") not in (None, alg):
        return False
    return jwk.get("kty") == _KTY.get(alg[:2])


@dataclass(slots=True)
class JwksCache:
    url: str
    session: Callable[[], aiohttp.ClientSession]
    cache_seconds: float
    min_refresh: float
    timeout: float
    on_fetch: FetchHook | None = None
    _jwks: dict[str, dict[str, Any]] = field(default_factory=dict)  # kid ("" when absent) -> JWK
    _prepared: dict[tuple[str, str], jwt.PyJWK] = field(default_factory=dict)
    _fetched_at: float = 0.0
    _last_attempt: float = float("-inf")
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _background: asyncio.Task[None] | None = None
    fetches: int = 0

    def configure(self, cache_seconds: float, min_refresh: float, timeout: float) -> None:
        self.cache_seconds, self.min_refresh, self.timeout = cache_seconds, min_refresh, timeout

    async def key(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        """The verification key for a token header; None when the JWKS has no usable key for it."""
        now = time.monotonic()
        if not self._fetched_at:
            if now - self._last_attempt >= 1.0:  # the JWKS is down: do not let every request wait on it
                await self._refresh(now, force=False)
        elif now - self._fetched_at > self.cache_seconds:
            self._refresh_in_background()
        found = self._find(kid, alg)
        if found is None and time.monotonic() - self._last_attempt >= self.min_refresh:
            # keys rotate: an unknown kid is the signal to look again (rate-limited by min_refresh)
            await self._refresh(time.monotonic(), force=True)
            found = self._find(kid, alg)
        return found

    def _find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        if kid is None:
            # no kid: acceptable only when exactly one key could verify this algorithm
            candidates = [k for k, jwk in self._jwks.items() if _compatible(jwk, alg)]
            if len(candidates) != 1:
                return None
            kid = candidates[0]
        cached = self._prepared.get((kid, alg))
        if cached is not None:
            return cached
        jwk = self._jwks.get(kid)
        if jwk is None:
            return None
        if not _compatible(jwk, alg):
            return None
        try:
            prepared = jwt.PyJWK(jwk, algorithm=alg)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            return None  # wrong key type for this algorithm, or an unusable key
        self._prepared[(kid, alg)] = prepared
        return prepared

    def _refresh_in_background(self) -> None:
        if self._background is None or self._background.done():
            self._background = asyncio.create_task(
                background(self._refresh(time.monotonic(), force=False), "jwks-refresh"), name="jwks-refresh"
            )

    async def _refresh(self, started: float, *, force: bool) -> None:
        async with self._lock:
            # someone else refreshed while we waited for the lock: their result is as fresh as ours would be
            if self._last_attempt >= started or (not force and self._fetched_at and self._fresh()):
                return
            self._last_attempt = time.monotonic()
            try:
                keys = await self._fetch()
            except (aiohttp.ClientError, TimeoutError, ValueError, orjson.JSONDecodeError) as exc:
                log.warning(
                    "JWKS fetch failed; keeping the keys we have",
                    url=display_url(self.url),
                    error=str(exc) or type(exc),
                )
                if self.on_fetch:
                    self.on_fetch("error")
                return
            self._jwks = keys
            self._prepared = {}
            self._fetched_at = time.monotonic()
            if self.on_fetch:
                self.on_fetch("ok")
            log.info("JWKS fetched", url=display_url(self.url), keys=len(keys))

    def _fresh(self) -> bool:
        return time.monotonic() - self._fetched_at <= self.cache_seconds

    async def _fetch(self) -> dict[str, dict[str, Any]]:
        self.fetches += 1
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with self.session().get(self.url, timeout=timeout, allow_redirects=False) as resp:
            if resp.status != 200:
                raise ValueError(f"JWKS answered HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_any():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("JWKS document too large")
        doc = orjson.loads(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise ValueError("JWKS document has no 'keys' list")
        out: dict[str, dict[str, Any]] = {}
        for jwk in doc["keys"]:
            if isinstance(jwk, dict) and isinstance(jwk.get("kty"), str):
                kid = jwk.get("kid")
                out[kid if isinstance(kid, str) else ""] = jwk
        return out

    async def close(self) -> None:
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background


class JwksRegistry:
    """One cache per JWKS URL, shared by every route (and every snapshot) that names it."""

    def __init__(self, on_fetch: FetchHook | None = None) -> None:
        self._caches: dict[str, JwksCache] = {}
        self._session: aiohttp.ClientSession | None = None
        self._on_fetch = on_fetch

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=10),
                headers={"Accept": "application/json"},
                cookie_jar=aiohttp.DummyCookieJar(),  # an identity provider's cookies are of no use to a key fetch
            )
        return self._session

    def get(self, url: str, cache_seconds: float, min_refresh: float, timeout: float) -> JwksCache:
        cache = self._caches.get(url)
        if cache is None:
            cache = JwksCache(url, self._client, cache_seconds, min_refresh, timeout, self._on_fetch)
            self._caches[url] = cache
        else:
            cache.configure(cache_seconds, min_refresh, timeout)
        return cache

    async def close(self) -> None:
        for cache in self._caches.values():
            await cache.close()
        if self._session is not None:
            await self._session.close()
