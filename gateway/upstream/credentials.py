"""The gateway's own credential for each upstream server (`upstream_auth` in policy), never the client's.

Built once by gateway/compose.py and handed to the transports (the forward step) and the health monitor.
"""

from __future__ import annotations

import structlog

from gateway.policy.snapshot import Snapshot

log = structlog.get_logger("gateway.upstream.credentials")


class UpstreamCredentials:
    """The gateway's own credential for each server, resolved once per snapshot (secrets by reference)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}

    def __call__(self, snapshot: Snapshot, server_name: str) -> tuple[tuple[str, str], ...]:
        key = (snapshot.version, server_name)
        cached = self._cache.get(key)
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
        if len(self._cache) > 1024:
            self._cache.clear()
        self._cache[key] = headers
        return headers
