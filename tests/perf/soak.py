"""`make soak`: the gateway with Redis and PostgreSQL under steady load and a schedule of faults, then a count of
what every request and audit record became. Not part of `make test`: it runs for SOAK_SECONDS (default 600).

Everything runs on loopback and stops by itself: a private redis-server and PostgreSQL cluster on free ports (the
faults kill and pause them, never the machine's shared ones), a faulty SDK upstream (tests/upstreams/faulty.py),
and a gateway with two workers. The load is SOAK_CLIENTS keep-alive clients (default 500), each in its own MCP
session sending `tools/call echo` with its own X-Request-ID, plus SOAK_STREAMS open GET event streams (default
2000). The faults, at fixed fractions of the run:

    0.10  Redis paused (SIGSTOP) for 10 s         0.50  upstream hangs for 10 s
    0.20  Redis killed, restarted empty after 5 s  0.60  servers.yaml corrupted for 5 s
    0.30  PostgreSQL restarted (5 s down)          0.70  one gateway worker SIGKILLed
    0.40  upstream killed, restarted after 5 s

Afterwards the gateway is stopped with SIGTERM (it drains and flushes its audit), and the audit table is compared
with what the clients saw: every request that got an HTTP answer must have exactly one record. Printed as a table
and written to tests/perf/results/soak.json.

    python -m tests.perf.soak [--seconds N] [--clients N] [--streams N] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import psutil

from gateway.db.scratch import scratch_database
from tests.harness import (
    Gateway,
    PostgresInstance,
    RedisInstance,
    Upstream,
    default_policies,
    start_gateway,
    start_postgres,
    start_redis,
    start_upstream,
)

ROOT = Path(__file__).resolve().parents[2]
FAULTY = "tests.upstreams.faulty"
ACCEPT_JSON = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
HUNG_AFTER = 30.0  # a request without an answer after this long counts as hung
KEYS = {f"k{i}": {"tenant": f"t{i % 5}", "scopes": ["read", "write"]} for i in range(20)}


@dataclass
class Tally:
    sent: int = 0
    answered: Counter[str] = field(default_factory=Counter)  # "200", "503 circuit_open", ...
    errors: Counter[str] = field(default_factory=Counter)  # transport errors: no HTTP answer
    hung: int = 0
    answered_ids: set[str] = field(default_factory=set)
    streams_opened: int = 0
    streams_lost: Counter[str] = field(default_factory=Counter)
    faults: list[tuple[float, str]] = field(default_factory=list)


def init_body() -> bytes:
    return orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "soak", "version": "1"},
            },
        }
    )


async def open_session(http: aiohttp.ClientSession, gw: Gateway, key: str) -> str | None:
    headers = {**ACCEPT_JSON, **gw.auth(key)}
    try:
        async with http.post(gw.url(), data=init_body(), headers=headers) as r:
            await r.read()
            sid = r.headers.get("Mcp-Session-Id")
            if r.status != 200 or sid is None:
                return None
        note = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
        async with http.post(gw.url(), data=note, headers={**headers, "Mcp-Session-Id": sid}) as r:
            await r.read()
        return sid
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


async def client_loop(n: int, gw: Gateway, tally: Tally, stop: asyncio.Event, pace: float) -> None:
    key = f"k{n % len(KEYS)}"
    timeout = aiohttp.ClientTimeout(total=HUNG_AFTER)
    connector = aiohttp.TCPConnector(limit=1)  # one keep-alive connection per client
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        sid: str | None = None
        seq = 0
        while not stop.is_set():
            if sid is None:
                sid = await open_session(http, gw, key)
                if sid is None:
                    await asyncio.sleep(1.0)
                    continue
            seq += 1
            rid = f"soak-{n}-{seq}"
            body = orjson.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": seq,
                    "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": rid}},
                }
            )
            headers = {**ACCEPT_JSON, **gw.auth(key), "Mcp-Session-Id": sid, "X-Request-ID": rid}
            tally.sent += 1
            try:
                async with http.post(gw.url(), data=body, headers=headers) as r:
                    raw = await r.read()
                    tally.answered_ids.add(rid)
                    label = str(r.status)
                    # a refusal comes with its own status, or with 200 under `compat_status_200: auto` (the
                    # default): either way the JSON-RPC error's reason names it
                    with contextlib.suppress(Exception):
                        label += " " + str(orjson.loads(raw)["error"]["data"]["reason"])
                    tally.answered[label] += 1
                    if r.status == 404:
                        sid = None  # the session is gone: a real client initializes again
            except TimeoutError:
                tally.hung += 1
            except (aiohttp.ClientError, OSError) as exc:
                tally.errors[type(exc).__name__] += 1
            await asyncio.sleep(pace)


async def stream_loop(n: int, gw: Gateway, tally: Tally, stop: asyncio.Event) -> None:
    key = f"k{n % len(KEYS)}"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while not stop.is_set():
            sid = await open_session(http, gw, key)
            if sid is None:
                await asyncio.sleep(1.0)
                continue
            headers = {"Accept": "text/event-stream", **gw.auth(key), "Mcp-Session-Id": sid}
            try:
                async with http.get(gw.url(), headers=headers) as r:
                    if r.status != 200:
                        tally.streams_lost[f"refused {r.status}"] += 1
                        await asyncio.sleep(1.0)
                        continue
                    tally.streams_opened += 1
                    stopper = asyncio.ensure_future(stop.wait())
                    reader = asyncio.ensure_future(r.content.read())
                    while not stop.is_set():
                        done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
                        if reader in done:
                            if not reader.result():
                                tally.streams_lost["ended"] += 1
                                break
                            reader = asyncio.ensure_future(r.content.read())
                    reader.cancel()
                    stopper.cancel()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                tally.streams_lost[type(exc).__name__] += 1
                await asyncio.sleep(0.5)


def gateway_rss(gw: Gateway) -> int:
    try:
        root = psutil.Process(gw.proc.pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return 0


def worker_pids(gw: Gateway) -> list[int]:
    with contextlib.suppress(psutil.Error):
        return [p.pid for p in psutil.Process(gw.proc.pid).children()]
    return []


async def faults(
    seconds: float,
    tally: Tally,
    redis: RedisInstance,
    pg: PostgresInstance,
    up: list[Upstream],
    gw: Gateway,
    work: Path,
) -> None:
    t0 = time.monotonic()

    async def at(fraction: float) -> None:
        await asyncio.sleep(max(0.0, t0 + fraction * seconds - time.monotonic()))

    def note(what: str) -> None:
        tally.faults.append((round(time.monotonic() - t0, 1), what))
        print(f"  [{time.monotonic() - t0:6.1f} s] {what}", flush=True)

    def control(mode: str) -> None:
        import httpx

        httpx.post(f"http://127.0.0.1:{up[0].port}/control", params={"mode": mode}, timeout=5)

    await at(0.10)
    redis_pid = redis.proc.pid
    os.kill(redis_pid, signal.SIGSTOP)
    note("redis paused")
    await asyncio.sleep(10)
    os.kill(redis_pid, signal.SIGCONT)
    note("redis resumed")
    await at(0.20)
    redis.stop()
    note("redis killed")
    await asyncio.sleep(5)
    await asyncio.to_thread(redis.start)
    note("redis restarted empty")
    await at(0.30)
    await asyncio.to_thread(pg.stop)
    note("postgresql stopped")
    await asyncio.sleep(5)
    await asyncio.to_thread(pg.start)
    note("postgresql started")
    await at(0.40)
    port = up[0].port
    up[0].proc.kill()
    note("upstream killed")
    await asyncio.sleep(5)
    up[0] = await asyncio.to_thread(start_upstream, work, module=FAULTY, port=port)
    note("upstream restarted")
    await at(0.50)
    await asyncio.to_thread(control, "hang")
    note("upstream hangs")
    await asyncio.sleep(10)
    await asyncio.to_thread(control, "ok")
    note("upstream answers again")
    await at(0.60)
    servers = gw.policies_dir / "servers.yaml"
    good = servers.read_text()
    servers.write_text("servers: {example: {upstreams: [{url: 12}]")
    note("servers.yaml corrupted")
    await asyncio.sleep(5)
    servers.write_text(good)
    note("servers.yaml restored")
    await at(0.70)
    pids = worker_pids(gw)
    if pids:
        os.kill(pids[0], signal.SIGKILL)
        note(f"worker {pids[0]} killed")


async def audited(dsn: str) -> Counter[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT request_id, count(*) AS n FROM audit_records WHERE request_id LIKE 'soak-%' GROUP BY request_id"
        )
    finally:
        await conn.close()
    return Counter({r["request_id"]: r["n"] for r in rows})


async def run(seconds: float, clients: int, streams: int, out: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="mgw-soak-"))
    redis = start_redis(work)
    pg = start_postgres()
    cleanup: list[Callable[[], None]] = []
    try:
        async with scratch_database(pg.dsn, prefix="mgw_soak_", migrated=True) as dsn:
            up = [start_upstream(work, module=FAULTY)]
            # SOAK_STREAMS open streams over 20 keys and 5 tenants, two workers: lift the default stream caps (16
            # per key, 64 per tenant) and stream pool (100 per worker) so the streams are load, not refusals
            # the gateway answers a hung upstream with 504 after `first_byte` (10 s here, 60 by default): well inside
            # the HUNG_AFTER a client waits, so "hung" counts requests the gateway itself never answered
            policies = default_policies(
                up[0].url,
                health={"interval": 2},
                pool={"max_streams": max(100, streams)},
                timeouts={"first_byte": 10},
            )
            policies["tenants.yaml"] = {
                "tenants": {f"t{i}": {"servers": ["example"], "max_open_streams": streams + 1} for i in range(5)}
            }
            # no rate tiers and no flood guard: the load is the faults' audience, not something to refuse
            policies["limits.yaml"] = {"streams": {"per_key": streams + 1}, "tiers": {}, "ddos": {"enabled": False}}
            policies["servers.yaml"]["servers"]["example"].pop("owner", None)
            config = {
                "workers": 2,
                "redis": {"url": redis.url},
                "postgres": {"dsn": dsn},
                "audit": {"sink": "postgres", "reconnect_interval": 0.5},
                "policy_poll_seconds": 0.5,
                "logging": {"level": "warning", "format": "json"},
                # every client runs on this one loopback address, and reconnects after a fault open new sessions
                # while the old ones wait for their TTL: the per-peer and session caps are not what is measured
                "http": {
                    "max_connections_per_ip": 0,
                    "max_sessions_per_key": 100_000,
                    "max_sessions_per_tenant": 100_000,
                },
            }
            gw = start_gateway(work / "gw", policies, keys=KEYS, config=config)
            cleanup.append(gw.proc.kill)

            def kill_upstream() -> None:  # the one running at the end: the faults replace it
                up[0].proc.kill()

            cleanup.append(kill_upstream)
            tally = Tally()
            stop = asyncio.Event()
            pace = max(0.05, clients / 400.0)  # about 400 calls per second in all: room for the faults on 2 cores
            print(f"soak: {seconds:.0f} s, {clients} clients, {streams} streams, work dir {work}", flush=True)
            tasks = [asyncio.create_task(client_loop(i, gw, tally, stop, pace)) for i in range(clients)]
            tasks += [asyncio.create_task(stream_loop(i, gw, tally, stop)) for i in range(streams)]
            started = time.monotonic()
            await asyncio.sleep(min(20.0, seconds * 0.05))
            rss_start = gateway_rss(gw)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(faults(seconds, tally, redis, pg, up, gw, work), timeout=seconds)
            await asyncio.sleep(max(0.0, started + seconds - time.monotonic()))
            rss_end = gateway_rss(gw)
            stop.set()
            await asyncio.wait(tasks, timeout=HUNG_AFTER + 10)
            for t in tasks:
                t.cancel()
            code = await asyncio.to_thread(gw.proc.stop, 60.0)
            records = await audited(dsn)
            up[0].proc.kill()
    finally:
        for undo in cleanup:
            with contextlib.suppress(Exception):
                undo()
        redis.stop()
        pg.destroy()
    missing = sorted(tally.answered_ids - set(records))
    duplicated = sorted(rid for rid, n in records.items() if n > 1)
    fivexx = {k: v for k, v in sorted(tally.answered.items()) if k.startswith("5")}
    result: dict[str, Any] = {
        "seconds": seconds,
        "clients": clients,
        "streams": streams,
        "requests_sent": tally.sent,
        "answered": sum(tally.answered.values()),
        "answers_by_status": dict(sorted(tally.answered.items())),
        "5xx_by_cause": fivexx,
        "no_answer_errors": dict(tally.errors),
        "hung": tally.hung,
        "audit_missing": len(missing),
        "audit_missing_examples": missing[:10],
        "audit_duplicated": len(duplicated),
        "streams_opened": tally.streams_opened,
        "streams_lost": dict(tally.streams_lost),
        "rss_start_mib": round(rss_start / 2**20, 1),
        "rss_end_mib": round(rss_end / 2**20, 1),
        "gateway_exit_code": code,
        "faults": tally.faults,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")  # noqa: ASYNC240
    width = max(len(k) for k in result)
    print()
    for k, v in result.items():
        if k != "faults":
            print(f"{k:<{width}}  {v}")
    print(f"\nwritten to {out}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "600")))
    ap.add_argument("--clients", type=int, default=int(os.environ.get("SOAK_CLIENTS", "500")))
    ap.add_argument("--streams", type=int, default=int(os.environ.get("SOAK_STREAMS", "2000")))
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "perf" / "results" / "soak.json")
    args = ap.parse_args()
    result = asyncio.run(run(args.seconds, args.clients, args.streams, args.out))
    # what the soak holds the gateway to: no request left hanging, no answered call without exactly one record
    failed = {k: result[k] for k in ("hung", "audit_missing", "audit_duplicated") if result[k]}
    if failed or result["gateway_exit_code"] != 0:
        print(f"soak failed: {failed or {'gateway_exit_code': result['gateway_exit_code']}}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
