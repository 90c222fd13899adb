"""Starting and stopping the benchmark's targets: fast upstream, bare proxy, and gateways in three setups.

Gateways are started through `tests.harness.start_gateway`, i.e. the exact `python -m gateway run` used in
production, with the full chain configured on: an API key, rate limits on every tier (high enough never to refuse),
the breaker, DDoS protection without the loopback allowlist, audit and metrics.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.db.scratch import with_db
from tests.harness import PYTHON, ROOT, Gateway, Proc, free_port, start_gateway, wait_port

SHARED_REDIS_URL = os.environ.get("MGW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
SHARED_PG_ADMIN_DSN = os.environ.get("MGW_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
# chain stages whose module still says it passes everything through (reported, so figures are read correctly)
STAGE_MODULES = ("client_guard", "authn", "authz", "ratelimit", "breaker")
_HIGH = {"rate": 1_000_000_000, "per": "second"}
# the diagnostic targets' limits.yaml: no tier at all (`tiers: {}` replaces the default role tiers), no ip, global or
# tenant_default tier, DDoS protection off; with the key's own `rate_limit` left out, the ratelimit stage finds
# nothing to decide and returns before the store (no GCRA, no Redis round trip) and the client guard has no rate
NO_LIMITS: dict[str, Any] = {"tiers": {}, "ddos": {"enabled": False}}
# every target with an event loop runs the loop-lag probe this often (the gateway's default is 25 ms): finer
# sampling catches shorter stalls, at ~0.1% of a core
LOOP_LAG_PROBE_SECONDS = 0.005
# health checks of the bench's servers: often enough that several run during every measurement
HEALTH_INTERVAL_SECONDS = 1.0
# the least audit the gateway allows: `sink: log` (no file, no PostgreSQL) and no per-record structured log line.
# What remains per request: observe() capturing the request into the queue, and in the writer task the record
# built, sanitized and sealed into the hash chain, then discarded
NO_AUDIT: dict[str, Any] = {"sink": "log", "log_records": False}


@dataclass
class Target:
    """One thing the load generator talks to: a URL for JSON calls, one for the SSE ticker, request headers."""

    name: str
    label: str
    json_url: str
    tick_url: str
    headers: dict[str, str] = field(default_factory=dict)
    pid: int | None = None  # the process whose RSS is measured / profiled
    gateway: Gateway | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    # Prometheus text with the event-loop lag figures (mcp_gateway_event_loop_*), reset by each read
    lag_url: str | None = None


def start_fast_upstream(workdir: Path, tick_interval: float, tick_count: int) -> tuple[Proc, int]:
    port = free_port()
    argv = [PYTHON, "-m", "tests.perf.upstream", "--port", str(port)]
    argv += ["--tick-interval", str(tick_interval), "--tick-count", str(tick_count)]
    proc = Proc(argv, workdir / "upstream.log").start()
    wait_port(port, proc=proc.popen, log=proc.log)
    return proc, port


def start_bare_proxy(workdir: Path, upstream_port: int) -> tuple[Proc, int]:
    port = free_port()
    argv = [
        PYTHON,
        "-m",
        "tests.perf.bare_proxy",
        "--port",
        str(port),
        "--upstream",
        f"http://127.0.0.1:{upstream_port}",
        "--loop-lag-probe",
        str(LOOP_LAG_PROBE_SECONDS),
    ]
    proc = Proc(argv, workdir / "bare-proxy.log").start()
    wait_port(port, proc=proc.popen, log=proc.log)
    return proc, port


def start_otlp_sink(workdir: Path) -> tuple[Proc, int]:
    """The tracing targets' collector: an OTLP/HTTP receiver that answers and counts (tests/otlp_receiver.py)."""
    port = free_port()
    proc = Proc([PYTHON, "-m", "tests.otlp_receiver", "--port", str(port)], workdir / "otlp-sink.log").start()
    wait_port(port, proc=proc.popen, log=proc.log)
    return proc, port


def bench_policies(upstream_port: int, max_connections: int, limits: bool = True) -> dict[str, Any]:
    base = f"http://127.0.0.1:{upstream_port}"
    server_common: dict[str, Any] = {
        "owner": "bench",
        "breaker": {"enabled": True},
        "health": {"interval": HEALTH_INTERVAL_SECONDS},
        # idle streams each hold one upstream connection
        "pool": {"max_connections": max_connections},
    }
    return {
        "servers.yaml": {
            "servers": {
                "bench": {"upstreams": [{"url": f"{base}/mcp"}], **server_common},
                "tick": {"upstreams": [{"url": f"{base}/tick"}], **server_common},
            }
        },
        "tenants.yaml": {"tenants": {"bench": {"servers": ["bench", "tick"]}}},
        "keys.yaml": {"keys": []},
        "limits.yaml": {
            "ip": _HIGH,
            "global": _HIGH,
            "tenant_default": _HIGH,
            "tiers": {"admin": _HIGH, "user": _HIGH, "anonymous": _HIGH},
            # the default allowlist exempts loopback, which would skip the guard for the bench's own traffic
            "ddos": {"enabled": True, "allowlist": []},
        }
        if limits
        else NO_LIMITS,
        "access.yaml": {"rules": []},
    }


def stage_status() -> dict[str, str]:
    """Per chain stage: 'active' or 'pass-through' (its module's own marker), as built at bench time."""
    out: dict[str, str] = {}
    for stage in STAGE_MODULES:
        try:
            mod = importlib.import_module(f"gateway.filters.{stage}")
        except ImportError:
            out[stage] = "missing"
            continue
        out[stage] = "pass-through" if "PASS-THROUGH" in (mod.__doc__ or "") else "active"
    return out


def _http_get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, repr(exc)


def wait_ready(gw: Gateway, deadline_s: float = 30.0) -> tuple[bool, str]:
    """Poll /readyz until 200 or the deadline; returns (ready, last body)."""
    end = time.monotonic() + deadline_s
    status, body = 0, ""
    while time.monotonic() < end:
        status, body = _http_get(f"{gw.base}/readyz")
        if status == 200:
            return True, body
        if gw.proc.popen is not None and gw.proc.popen.poll() is not None:
            return False, "gateway exited:\n" + gw.logs()[-2000:]
        time.sleep(0.2)
    return False, body


def process_group(pgid: int) -> list[int]:
    """Live pids in a process group (the gateway runs in its own session, so its workers share its group)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(entry.name))
    return sorted(pids)


def start_bench_gateway(
    workdir: Path,
    name: str,
    upstream_port: int,
    max_connections: int,
    config: dict[str, Any] | None = None,
    limits: bool = True,
) -> Gateway:
    """A gateway with the full chain; `limits=False` leaves rate limiting off (NO_LIMITS, key without a limit)."""
    key: dict[str, Any] = {"tenant": "bench", "scopes": ["read", "write"]}
    if limits:
        key["rate_limit"] = _HIGH
    # every load generator connection comes from 127.0.0.1 (thousands of idle streams in the memory scenario): no
    # per-peer connection cap
    cfg = dict(config or {})
    cfg["http"] = {"max_connections_per_ip": 0, **cfg.get("http", {})}
    return start_gateway(
        workdir / name,
        bench_policies(upstream_port, max_connections, limits),
        keys={"bench": key},
        config={"loop_lag_probe_seconds": LOOP_LAG_PROBE_SECONDS, **cfg},
    )


def gateway_target(name: str, label: str, gw: Gateway) -> Target:
    return Target(
        name=name,
        label=label,
        json_url=gw.url("bench"),
        tick_url=gw.url("tick"),
        headers=gw.auth("bench"),
        pid=gw.proc.pid,
        gateway=gw,
        lag_url=f"{gw.base}/metrics",
    )


# ------------------------------------------------------------------ Redis + PostgreSQL backends of target (d)


@dataclass
class Backends:
    redis_url: str
    key_prefix: str
    pg_dsn: str | None
    db_name: str
    notes: dict[str, Any] = field(default_factory=dict)


def create_database(db_name: str) -> str:
    """CREATE DATABASE on the shared server (raises when PostgreSQL is not there); returns its DSN."""
    import asyncio

    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(SHARED_PG_ADMIN_DSN, timeout=5)
        try:
            await conn.execute(f'CREATE DATABASE "{db_name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return with_db(SHARED_PG_ADMIN_DSN, db_name)


def drop_database(db_name: str) -> None:
    """DROP DATABASE ... WITH (FORCE); errors are ignored (nothing to drop, server gone)."""
    with contextlib.suppress(Exception):
        import asyncio

        import asyncpg

        async def drop() -> None:
            conn = await asyncpg.connect(SHARED_PG_ADMIN_DSN, timeout=5)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
            finally:
                await conn.close()

        asyncio.run(drop())


def prepare_backends() -> Backends:
    """A unique Redis key prefix and a fresh PostgreSQL database, migrated if `mcp-gateway db migrate` exists."""
    token = secrets.token_hex(4)
    b = Backends(SHARED_REDIS_URL, f"mgwbench:{token}:", None, f"mgw_bench_{token}")
    try:
        b.pg_dsn = create_database(b.db_name)
        b.notes["postgres"] = f"fresh database {b.db_name}"
    except Exception as exc:  # reported in the output; the target still runs with what it has
        b.notes["postgres"] = f"unavailable: {type(exc).__name__}: {exc}"
        return b
    b.notes["migrate"] = migrate(b.pg_dsn)
    return b


def migrate(dsn: str) -> str:
    help_out = subprocess.run(
        [PYTHON, "-m", "gateway", "--help"], check=False, capture_output=True, text=True, timeout=60, cwd=ROOT
    ).stdout
    if "db" not in help_out.split("{", 1)[-1].split("}", 1)[0].split(","):
        return "not available (no `mcp-gateway db` command yet)"
    env = {**os.environ, "MGW_POSTGRES_DSN": dsn}
    res = subprocess.run(
        [PYTHON, "-m", "gateway", "db", "migrate"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    if res.returncode != 0:
        return f"failed (exit {res.returncode}): {(res.stderr or res.stdout)[-500:]}"
    return "ok"


def backend_activity(b: Backends) -> dict[str, Any]:
    """What the run left in the backends: Redis keys under our prefix, rows in our database's tables."""
    out: dict[str, Any] = {}
    try:
        import redis

        client = redis.Redis.from_url(b.redis_url, socket_timeout=5)
        out["redis_keys"] = sum(1 for _ in client.scan_iter(match=b.key_prefix + "*", count=1000))
        client.close()
    except Exception as exc:
        out["redis_keys"] = f"unavailable: {type(exc).__name__}"
    if b.pg_dsn is not None:
        try:
            import asyncio

            import asyncpg

            async def rows() -> dict[str, int]:
                conn = await asyncpg.connect(b.pg_dsn, timeout=5)
                try:
                    recs = await conn.fetch("SELECT relname, n_live_tup FROM pg_stat_user_tables")
                    return {str(r["relname"]): int(r["n_live_tup"]) for r in recs if r["n_live_tup"]}
                finally:
                    await conn.close()

            out["postgres_rows"] = asyncio.run(rows())
        except Exception as exc:
            out["postgres_rows"] = f"unavailable: {type(exc).__name__}"
    return out


def cleanup_backends(b: Backends) -> None:
    """Remove only what this run created: keys under its prefix, its own database."""
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis.from_url(b.redis_url, socket_timeout=5)
        batch = []
        for key in client.scan_iter(match=b.key_prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
        client.close()
    if b.pg_dsn is not None:
        drop_database(b.db_name)


def redis_commands(info: dict[str, Any]) -> dict[str, int]:
    """`INFO commandstats` (as parsed by redis-py) -> calls per command name."""
    out: dict[str, int] = {}
    for key, val in info.items():
        if key.startswith("cmdstat_") and isinstance(val, dict):
            out[key.removeprefix("cmdstat_")] = int(val.get("calls", 0))
    return out


def commands_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] - before.get(k, 0) > 0}
