"""Per-upstream keep-alive connection pools.

One aiohttp ClientSession per upstream instance, so one slow upstream cannot starve the others of connections.
Pools are runtime state keyed by (url, pool settings): a reload that keeps a server's pool settings keeps its
warm connections. The client timeout has no `total`: aiohttp's default of 300 s would cut long SSE streams.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from gateway.policy.resilience import PoolPolicy


@dataclass(frozen=True, slots=True)
class PoolKey:
    origin: str
    max_connections: int
    keepalive: float


class UpstreamPools:
    def __init__(self) -> None:
        self._sessions: dict[PoolKey, aiohttp.ClientSession] = {}
        self._closed = False

    @staticmethod
    def _origin(url: str) -> str:
        u = URL(url)
        return f"{u.scheme}://{u.host}:{u.port}"

    def session(self, url: str, pool: PoolPolicy) -> aiohttp.ClientSession:
        key = PoolKey(self._origin(url), pool.max_connections, pool.keepalive_seconds)
        sess = self._sessions.get(key)
        if sess is None or sess.closed:
            if self._closed:
                raise RuntimeError("pools are closed")
            connector = aiohttp.TCPConnector(
                limit=pool.max_connections,
                limit_per_host=pool.max_connections,
                keepalive_timeout=pool.keepalive_seconds,
                enable_cleanup_closed=True,
                ttl_dns_cache=60,
            )
            sess = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=10, sock_read=None),
                auto_decompress=False,
                # no line-length limit concerns: we read chunks, never lines; a bigger buffer means fewer wakeups
                read_bufsize=2**18,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                trust_env=False,
            )
            self._sessions[key] = sess
        return sess

    def stats(self) -> dict[str, dict[str, int]]:
        """In-use and idle connection counts per upstream origin (for metrics)."""
        out: dict[str, dict[str, int]] = {}
        for key, sess in self._sessions.items():
            conn = sess.connector
            if conn is None:
                continue
            acquired = len(getattr(conn, "_acquired", ()))
            idle = sum(len(v) for v in getattr(conn, "_conns", {}).values())
            waiting = sum(len(v) for v in getattr(conn, "_waiters", {}).values())
            entry = out.setdefault(key.origin, {"in_use": 0, "idle": 0, "waiting": 0, "limit": 0})
            entry["in_use"] += acquired
            entry["idle"] += idle
            entry["waiting"] += waiting
            entry["limit"] += key.max_connections
        return out

    async def close(self) -> None:
        self._closed = True
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


POOLS: web.AppKey[UpstreamPools] = web.AppKey("upstream_pools", UpstreamPools)
