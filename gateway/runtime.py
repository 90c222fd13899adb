"""Runtime components the transports need on every request, gathered once at startup (one AppKey lookup)."""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
from aiohttp import web

from gateway.clientip import ClientIpResolver
from gateway.policy.snapshot import Snapshot
from gateway.sessions import SessionStore
from gateway.upstream.http import HttpForwarder
from gateway.upstream.routing import Picker, first_upstream

log = structlog.get_logger("gateway.runtime")


@dataclass
class Runtime:
    sessions: SessionStore
    forwarder: HttpForwarder
    client_ip: ClientIpResolver
    allowed_origins: frozenset[str]
    max_body_bytes: int
    picker: Picker = first_upstream
    _cred_cache: dict[tuple[str, str], tuple[tuple[str, str], ...]] = field(default_factory=dict)

    def upstream_credentials(self, snapshot: Snapshot, server_name: str) -> tuple[tuple[str, str], ...]:
        """The gateway's own credential for this server, resolved once per snapshot (secrets by reference)."""
        key = (snapshot.version, server_name)
        cached = self._cred_cache.get(key)
        if cached is not None:
            return cached
        server = snapshot.servers[server_name]
        headers: tuple[tuple[str, str], ...] = ()
        if server.upstream_auth is not None:
            ua = server.upstream_auth
            try:
                secret = ua.secret.resolve(snapshot.source_dir)
            except LookupError as exc:
                log.error("upstream credential unavailable", server=server_name, error=str(exc))
                secret = ""
            if secret:
                value = f"Bearer {secret}" if ua.type == "bearer" else secret
                headers = ((ua.header if ua.type == "header" else "Authorization", value),)
        if len(self._cred_cache) > 1024:
            self._cred_cache.clear()
        self._cred_cache[key] = headers
        return headers


RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)
