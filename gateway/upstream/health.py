"""Active health checks: one background task per upstream instance, speaking MCP to it.

Kinds (HealthPolicy.kind):
  mcp        streamable HTTP: initialize -> notifications/initialized -> ping -> DELETE of the probe session
             (on `eras: modern` routes: the stateless probe below);
             legacy SSE (`transport: sse`): open the SSE stream and wait for its `endpoint` event;
             WebSocket upstreams: a TCP connect to the instance (the MCP handshake there is per client socket)
  stateless  a 2026-07-28 `server/discover` POST; any well-formed JSON-RPC answer below 500 means it serves
  http       GET `path` on the instance's origin; any 2xx is healthy

`healthy_threshold` consecutive successes make an instance healthy, `unhealthy_threshold` consecutive failures
unhealthy; an instance nobody has checked yet counts as usable. Each wait is `interval` +/- `jitter` so the
checks of many gateways do not arrive in lockstep. Tasks follow policy reloads: `sync(snapshot)` starts checks
for new instances, stops them for removed ones and restarts them when the check settings change.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiohttp
import orjson
import structlog
from yarl import URL

from gateway.loophold import background
from gateway.policy.resilience import HealthPolicy
from gateway.policy.servers import ServerPolicy
from gateway.policy.snapshot import Snapshot
from gateway.redact import display_url, redact_credentials

log = structlog.get_logger("gateway.health")

Status = Literal["unknown", "healthy", "unhealthy"]
Credentials = Callable[[Snapshot, str], tuple[tuple[str, str], ...]]

PROBE_CLIENT = {"name": "mcp-gateway-health", "version": "1"}
LEGACY_VERSION = "2025-06-18"
MODERN_VERSION = "2026-07-28"
MAX_PROBE_BODY = 1024 * 1024


class ProbeFailed(Exception):
    """The check failed; the message is what /admin/servers shows as `last_error`."""


class TransportProbe(Protocol):
    """The check of a transport that is not reached over the network (stdio: gateway/upstream/stdio/health.py)."""

    def checks(self, server: ServerPolicy) -> bool:
        """Whether the server is checked at all."""
        ...

    async def probe(self, name: str, server: ServerPolicy, snapshot: Snapshot, timeout: float) -> None:
        """Raise ProbeFailed (or time out) when unhealthy."""
        ...


@dataclass(slots=True)
class InstanceHealth:
    server: str
    url: str
    status: Status = "unknown"
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
    checks: int = 0
    last_error: str | None = None
    last_latency: float | None = None
    last_checked: float | None = None  # wall-clock time of the last check

    def view(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "checks": self.checks,
            "consecutive_successes": self.successes,
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
            "last_latency_ms": round(self.last_latency * 1000, 2) if self.last_latency is not None else None,
            "last_checked": self.last_checked,
        }


@dataclass(frozen=True, slots=True)
class _TaskSpec:
    health: HealthPolicy
    transport: str
    eras: str = "both"


class HealthMonitor:
    def __init__(
        self,
        credentials: Credentials,
        on_change: Callable[[InstanceHealth, Status], None] | None = None,
        on_check: Callable[[InstanceHealth, bool, float], None] | None = None,
        probes: Mapping[str, TransportProbe] | None = None,
    ) -> None:
        self._credentials = credentials
        # transport -> its own check (a stdio server has no URL to reach)
        self._probes = dict(probes or {})
        self._on_change = on_change
        self._on_check = on_check
        self._states: dict[tuple[str, str], InstanceHealth] = {}
        self._tasks: dict[tuple[str, str], tuple[_TaskSpec, asyncio.Task[None]]] = {}
        self._snapshot: Snapshot | None = None
        self._session: aiohttp.ClientSession | None = None
        self._running = False

    # ------------------------------------------------------------------ queries (request path: dict lookups)

    def healthy(self, server: str, url: str) -> bool:
        st = self._states.get((server, url))
        return st is None or st.status != "unhealthy"

    def state(self, server: str, url: str) -> InstanceHealth | None:
        return self._states.get((server, url))

    def states(self) -> list[InstanceHealth]:
        return list(self._states.values())

    def running_checks(self) -> set[tuple[str, str]]:
        return {k for k, (_, t) in self._tasks.items() if not t.done()}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None),
            connector=aiohttp.TCPConnector(limit=32, force_close=True),
            trust_env=False,
            # a probe is a fresh client each time: an upstream's cookie must not ride along on the next probe
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._running = True
        self._reconcile()

    async def stop(self) -> None:
        self._running = False
        tasks = [t for _, t in self._tasks.values()]
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def sync(self, snapshot: Snapshot) -> None:
        """Follow a new policy snapshot (called when the chain is built for it)."""
        self._snapshot = snapshot
        if self._running:
            self._reconcile()

    def _reconcile(self) -> None:
        snapshot = self._snapshot
        if snapshot is None:
            return
        wanted: dict[tuple[str, str], _TaskSpec] = {}
        for name, server in snapshot.servers.items():
            custom = self._probes.get(server.transport)
            if server.transport == "stdio" and (custom is None or not custom.checks(server)):
                continue
            for up in server.upstreams:
                if server.health.enabled:
                    wanted[(name, up.url)] = _TaskSpec(server.health, server.transport, server.eras)
        for key, (spec, task) in list(self._tasks.items()):
            if wanted.get(key) != spec:
                task.cancel()
                del self._tasks[key]
        for key, spec in wanted.items():
            if key not in self._tasks:
                task = asyncio.create_task(
                    background(self._loop(key[0], key[1], spec), "health"), name=f"health:{key[0]}"
                )
                self._tasks[key] = (spec, task)
        # instances that left the policy (or have checks turned off) stop being judged
        for key in list(self._states):
            if key not in wanted:
                del self._states[key]

    # ------------------------------------------------------------------ the check loop

    async def _loop(self, server: str, url: str, spec: _TaskSpec) -> None:
        hp = spec.health
        # the first check comes soon (spread over at most a second) so a dead instance is found quickly
        await asyncio.sleep(random.uniform(0, min(1.0, hp.interval)))
        while True:
            await self.check_once(server, url, spec)
            delay = hp.interval * (1 + random.uniform(-hp.jitter, hp.jitter))
            await asyncio.sleep(max(0.01, delay))

    async def check_once(self, server: str, url: str, spec: _TaskSpec | None = None) -> bool:
        snapshot = self._snapshot
        policy = snapshot.servers.get(server) if snapshot is not None else None
        if snapshot is None or policy is None:
            return False
        if spec is None:
            spec = _TaskSpec(policy.health, policy.transport, policy.eras)
        start = time.perf_counter()
        error: str | None = None
        try:
            async with asyncio.timeout(spec.health.timeout):
                custom = self._probes.get(policy.transport)
                if custom is not None:
                    await custom.probe(server, policy, snapshot, spec.health.timeout)
                else:
                    await self._probe(url, policy, spec, self._credentials(snapshot, server))
        except TimeoutError:
            error = f"timeout after {spec.health.timeout}s"
        except ProbeFailed as exc:
            error = str(exc)
        except (aiohttp.ClientError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:200]
        latency = time.perf_counter() - start
        if error is not None:
            # an exception's text may quote the URL it failed on (userinfo, query): /admin/servers shows it
            error = redact_credentials(error)
        self._record(server, url, spec.health, error, latency)
        return error is None

    def _record(self, server: str, url: str, hp: HealthPolicy, error: str | None, latency: float) -> None:
        key = (server, url)
        st = self._states.get(key)
        if st is None:
            st = self._states[key] = InstanceHealth(server, url)
        st.checks += 1
        st.last_checked = time.time()
        st.last_latency = latency
        old = st.status
        if error is None:
            st.successes += 1
            st.failures = 0
            if st.status != "healthy" and (st.successes >= hp.healthy_threshold or st.status == "unknown"):
                st.status = "healthy"
        else:
            st.last_error = error
            st.failures += 1
            st.successes = 0
            if st.status != "unhealthy" and st.failures >= hp.unhealthy_threshold:
                st.status = "unhealthy"
        if self._on_check is not None:
            self._on_check(st, error is None, latency)
        if st.status != old:
            log.info(
                "upstream health changed", server=server, upstream=display_url(url), old=old, new=st.status, error=error
            )
            if self._on_change is not None:
                self._on_change(st, old)

    # ------------------------------------------------------------------ probes

    async def _probe(self, url: str, server: ServerPolicy, spec: _TaskSpec, creds: tuple[tuple[str, str], ...]) -> None:
        session = self._session
        if session is None:
            raise ProbeFailed("health checker not started")
        hp = spec.health
        if hp.kind == "http":
            await self._probe_http(session, url, hp.path or "/", creds)
        elif spec.transport == "websocket" or url.startswith(("ws://", "wss://")):
            await self._probe_tcp(url)
        elif hp.kind == "stateless" or spec.eras == "modern":
            # a 2026-only route has no initialize to speak: its MCP check is the stateless one
            await self._probe_stateless(session, url, creds)
        elif spec.transport == "sse":
            await self._probe_sse(session, url, creds)
        else:
            await self._probe_mcp(session, url, creds)

    @staticmethod
    async def _probe_http(
        session: aiohttp.ClientSession, url: str, path: str, creds: tuple[tuple[str, str], ...]
    ) -> None:
        target = URL(url).with_path(path).with_query(None)
        async with session.get(target, headers=dict(creds), allow_redirects=False) as resp:
            if not 200 <= resp.status < 300:
                raise ProbeFailed(f"GET {path} answered {resp.status}")

    @staticmethod
    async def _probe_tcp(url: str) -> None:
        u = URL(url)
        port = u.port or (443 if u.scheme in ("https", "wss") else 80)
        _, writer = await asyncio.open_connection(u.host, port)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    @staticmethod
    async def _probe_sse(session: aiohttp.ClientSession, url: str, creds: tuple[tuple[str, str], ...]) -> None:
        headers = {"Accept": "text/event-stream", **dict(creds)}
        async with session.get(url, headers=headers, allow_redirects=False) as resp:
            if resp.status != 200:
                raise ProbeFailed(f"SSE GET answered {resp.status}")
            seen = b""
            async for chunk in resp.content.iter_any():
                seen += chunk
                if b"event: endpoint" in seen or b"event:endpoint" in seen:
                    return
                if len(seen) > 65536:
                    break
            raise ProbeFailed("SSE stream sent no endpoint event")

    async def _probe_stateless(
        self, session: aiohttp.ClientSession, url: str, creds: tuple[tuple[str, str], ...]
    ) -> None:
        body = {
            "jsonrpc": "2.0",
            "id": "gateway-health",
            "method": "server/discover",
            "params": {
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
                    "io.modelcontextprotocol/clientCapabilities": {},
                }
            },
        }
        headers = self._post_headers(creds)
        headers["MCP-Protocol-Version"] = MODERN_VERSION
        headers["Mcp-Method"] = "server/discover"
        async with session.post(url, data=orjson.dumps(body), headers=headers, allow_redirects=False) as resp:
            if resp.status >= 500:
                raise ProbeFailed(f"server/discover answered {resp.status}")
            # any JSON-RPC answer will do (an SDK may answer an unusable request with its own id, e.g.
            # "server-error"): the process is up and speaking JSON-RPC
            msg = await _read_message(resp, None)
            if msg is None:
                raise ProbeFailed(f"server/discover answered {resp.status} without a JSON-RPC response")

    async def _probe_mcp(self, session: aiohttp.ClientSession, url: str, creds: tuple[tuple[str, str], ...]) -> None:
        headers = self._post_headers(creds)
        init = {
            "jsonrpc": "2.0",
            "id": "gateway-health-init",
            "method": "initialize",
            "params": {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": PROBE_CLIENT},
        }
        async with session.post(url, data=orjson.dumps(init), headers=headers, allow_redirects=False) as resp:
            if resp.status != 200:
                raise ProbeFailed(f"initialize answered {resp.status}")
            msg = await _read_message(resp, "gateway-health-init")
            session_id = resp.headers.get("Mcp-Session-Id")
        if msg is None or "result" not in msg:
            raise ProbeFailed("initialize got no result")
        result = msg["result"]
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        if isinstance(version, str):
            headers["MCP-Protocol-Version"] = version
        if session_id:
            headers["Mcp-Session-Id"] = session_id
        try:
            note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            async with session.post(url, data=orjson.dumps(note), headers=headers, allow_redirects=False) as resp:
                if resp.status >= 300:
                    raise ProbeFailed(f"notifications/initialized answered {resp.status}")
            ping = {"jsonrpc": "2.0", "id": "gateway-health-ping", "method": "ping"}
            async with session.post(url, data=orjson.dumps(ping), headers=headers, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise ProbeFailed(f"ping answered {resp.status}")
                pong = await _read_message(resp, "gateway-health-ping")
                if pong is None or "result" not in pong:
                    raise ProbeFailed("ping got no result")
        finally:
            if session_id:
                # end the probe's session so checks do not pile up sessions in the upstream
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.delete(url, headers=headers, allow_redirects=False):
                        pass

    @staticmethod
    def _post_headers(creds: tuple[tuple[str, str], ...]) -> dict[str, str]:
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        headers.update(creds)
        return headers


async def _read_message(resp: aiohttp.ClientResponse, rpc_id: str | None) -> dict[str, Any] | None:
    """The JSON-RPC response with `rpc_id` (None: any response) from a JSON or SSE answer (bounded read)."""
    buf = bytearray()
    ctype = resp.headers.get("Content-Type", "")
    async for chunk in resp.content.iter_any():
        buf += chunk
        if len(buf) > MAX_PROBE_BODY:
            raise ProbeFailed("probe answer too large")
        if ctype.startswith("text/event-stream"):
            found = _find_in_sse(bytes(buf), rpc_id)
            if found is not None:
                return found
    if ctype.startswith("text/event-stream"):
        return _find_in_sse(bytes(buf), rpc_id)
    try:
        msg = orjson.loads(buf)
    except orjson.JSONDecodeError:
        return None
    return msg if _matches(msg, rpc_id) else None


def _matches(msg: Any, rpc_id: str | None) -> bool:
    if not isinstance(msg, dict) or ("result" not in msg and "error" not in msg):
        return False
    return rpc_id is None or msg.get("id") == rpc_id


def _find_in_sse(data: bytes, rpc_id: str | None) -> dict[str, Any] | None:
    for line in data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        try:
            msg = orjson.loads(line[5:].strip())
        except orjson.JSONDecodeError:
            continue
        if _matches(msg, rpc_id):
            return msg  # type: ignore[no-any-return]
    return None
