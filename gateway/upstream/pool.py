"""Per-upstream keep-alive connection pools.

The forward path uses the lean HTTP/1.1 client's pools (`h1`, gateway/net/h1client.py), or with
`upstream.client: aiohttp` an aiohttp ClientSession per pool (`session`, gateway/upstream/aiohttp_client.py);
WebSocket upstreams always use an aiohttp ClientSession (`session`). Either way there is one pool per upstream
instance, so one slow upstream cannot starve the others of connections. Long-lived streams (GET event streams,
legacy SSE, 2026 listen) go over a second pool per origin (`streams`, `pool.max_streams`) behind a fair stream
budget (gateway/upstream/streams.py): an idle stream never holds a connection that request/response traffic waits
for. Pools are runtime state keyed by (origin, pool settings): a reload that keeps a server's pool settings keeps its
warm connections. The aiohttp client timeout has no `total`: aiohttp's default of 300 s would cut long streams.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import NamedTuple

import aiohttp
from yarl import URL

from gateway.net.h1client import Endpoint, H1Pool, parse_url
from gateway.policy.resilience import PoolPolicy
from gateway.upstream.streams import StreamBudget, StreamEvents


@dataclass(frozen=True, slots=True)
class PoolKey:
    origin: str
    max_connections: int
    keepalive: float
    # what the session carries ("ws", "forward", "streams"): each has its own connections, as the lean pools do
    kind: str = "ws"


class StreamPool(NamedTuple):
    """The connections of one origin's streams and the budget that admits them."""

    h1: H1Pool
    budget: StreamBudget


class UpstreamPools:
    def __init__(self) -> None:
        self._sessions: dict[PoolKey, aiohttp.ClientSession] = {}
        # a plain tuple key: this lookup is on every forwarded request and a dataclass hashes in Python
        self._h1: dict[tuple[str, int, float], H1Pool] = {}
        self._streams: dict[tuple[str, int, float], StreamPool] = {}
        # refusals and evictions of the stream budgets (metrics); set before the first request
        self.stream_events: StreamEvents | None = None
        self._closed = False

    @staticmethod
    def _origin(url: str) -> str:
        u = URL(url)
        return f"{u.scheme}://{u.host}:{u.port}"

    def session(
        self,
        url: str,
        pool: PoolPolicy,
        *,
        kind: str = "ws",
        limit: int | None = None,
        trace_configs: list[aiohttp.TraceConfig] | None = None,
    ) -> aiohttp.ClientSession:
        """The aiohttp session of this URL's origin for `kind`, at most `limit` connections (default the pool's)."""
        limit = pool.max_connections if limit is None else limit
        key = PoolKey(self._origin(url), limit, pool.keepalive_seconds, kind)
        sess = self._sessions.get(key)
        if sess is None or sess.closed:
            if self._closed:
                raise RuntimeError("pools are closed")
            connector = aiohttp.TCPConnector(
                limit=limit,
                limit_per_host=limit,
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
                # one session carries every caller's requests: a cookie one upstream answer set must never ride
                # along on another caller's request (the lean client has no cookie store at all)
                cookie_jar=aiohttp.DummyCookieJar(),
                trace_configs=trace_configs,
            )
            self._sessions[key] = sess
        return sess

    def h1(self, url: str, pool: PoolPolicy) -> tuple[H1Pool, Endpoint]:
        """The forward path's pool for this URL's origin, and the parsed URL."""
        endpoint = parse_url(url)
        key = (endpoint.origin, pool.max_connections, pool.keepalive_seconds)
        h1 = self._h1.get(key)
        if h1 is None:
            if self._closed:
                raise RuntimeError("pools are closed")
            h1 = self._h1[key] = H1Pool(endpoint, pool.max_connections, pool.keepalive_seconds)
        return h1, endpoint

    def streams(self, url: str, pool: PoolPolicy) -> tuple[StreamPool, Endpoint]:
        """The stream pool and budget for this URL's origin, and the parsed URL."""
        endpoint = parse_url(url)
        key = (endpoint.origin, pool.max_streams, pool.keepalive_seconds)
        sp = self._streams.get(key)
        if sp is None:
            if self._closed:
                raise RuntimeError("pools are closed")
            # the connection limit equals the budget: a slot handed over by an eviction frees its connection at once
            sp = self._streams[key] = StreamPool(
                H1Pool(endpoint, pool.max_streams, pool.keepalive_seconds),
                StreamBudget(endpoint.origin, pool.max_streams, self.stream_events),
            )
        return sp, endpoint

    def stream_stats(self) -> dict[str, dict[str, int]]:
        """Open streams, tenants holding them and the limit per upstream origin (for metrics)."""
        out: dict[str, dict[str, int]] = {}
        for (origin, _, _), sp in self._streams.items():
            entry = out.setdefault(origin, {"open": 0, "tenants": 0, "limit": 0})
            entry["open"] += sp.budget.open
            entry["tenants"] += sp.budget.tenants
            entry["limit"] += sp.budget.limit
        return out

    def stats(self) -> dict[str, dict[str, int]]:
        """In-use, idle and waiting connection counts and the limit per upstream origin (for metrics)."""
        out: dict[str, dict[str, int]] = {}

        def add(origin: str, in_use: int, idle: int, waiting: int, limit: int) -> None:
            entry = out.setdefault(origin, {"in_use": 0, "idle": 0, "waiting": 0, "limit": 0})
            entry["in_use"] += in_use
            entry["idle"] += idle
            entry["waiting"] += waiting
            entry["limit"] += limit

        for (origin, _, _), h1 in self._h1.items():
            add(origin, *h1.stats(), h1.limit)
        for key, sess in self._sessions.items():
            if key.kind == "streams":
                continue  # streams are counted by their budgets (stream_stats), as the lean stream pools are
            conn = sess.connector
            if conn is None:
                continue
            acquired = len(getattr(conn, "_acquired", ()))
            idle = sum(len(v) for v in getattr(conn, "_conns", {}).values())
            waiting = sum(len(v) for v in getattr(conn, "_waiters", {}).values())
            add(key.origin, acquired, idle, waiting, key.max_connections)
        return out

    async def close(self) -> None:
        self._closed = True
        for h1 in self._h1.values():
            h1.close()
        self._h1.clear()
        for sp in self._streams.values():
            sp.h1.close()
        self._streams.clear()
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
