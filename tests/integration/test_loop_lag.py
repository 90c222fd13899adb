"""Guard for issue 22: under steady load, with every periodic task of the gateway running, no task holds the
event loop for long. Read from the gateway's own loop-lag probe on /metrics.

The bound (20 ms) is generous on purpose: the benchmark (`make bench --latency`) holds the real targets (a stall
under 2 ms); this test only has to catch a task that goes back to doing a whole batch at once. It is built to
catch exactly that: audit arguments are recorded (each record then costs a few hundred microseconds to sanitize)
and the batch is large, so a writer that built a batch in one go would hold the loop for tens of milliseconds per
flush. Every other periodic task runs at a short interval: health checks, policy polling (and a reload by a file
change and by SIGHUP during the load), fair-share recomputation, key-usage flushes, IP-block sync, the metrics
sampler; with Redis and PostgreSQL also the demand exchange, breaker sync and the audit COPY.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.looplag import LoopLagProbe
from tests.harness import PYTHON, Gateway, Proc, free_port, start_gateway, wait_port
from tests.integration.test_db_migrations import temp_database

pytestmark = pytest.mark.integration

STALL_BOUND_S = 0.020
LOAD_SECONDS = 4.0
CONNECTIONS = 4
# recorded arguments: a dozen strings, each scanned for secrets by the audit writer
ARGUMENTS = {f"field_{i}": f"value {i} " + "lorem ipsum dolor sit amet " * 7 for i in range(12)}
PROTOCOL = "2025-06-18"
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
HIGH = {"rate": 1_000_000_000, "per": "second"}


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[str]:
    """The benchmark's fast upstream: answers tools/call at once, so the gateway, not the upstream, is busy."""
    port = free_port()
    proc = Proc([PYTHON, "-m", "tests.perf.upstream", "--port", str(port)], tmp_path / "upstream.log").start()
    try:
        wait_port(port, proc=proc.popen, log=proc.log)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.stop()


def policies(upstream_url: str, weight: float = 1.0) -> dict[str, Any]:
    return {
        "servers.yaml": {
            "servers": {
                "lag": {
                    "upstreams": [{"url": upstream_url}],
                    "owner": "acme",
                    "audit_arguments": True,
                    "breaker": {"enabled": True},
                    "health": {"interval": 0.2, "timeout": 1.0},
                }
            }
        },
        "tenants.yaml": {"tenants": {"acme": {"servers": ["lag"], "weight": weight}, "other": {"servers": []}}},
        "keys.yaml": {"keys": []},
        "limits.yaml": {
            "ip": HIGH,
            "global": HIGH,
            "tenant_default": HIGH,
            "tiers": {"admin": HIGH, "user": HIGH, "anonymous": HIGH},
            "fairness": {"interval_seconds": 0.2},
            "ddos": {"enabled": True, "allowlist": []},
        },
        "access.yaml": {"rules": []},
    }


def gauge(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not in /metrics")


def total(text: str, name: str, **labels: str) -> float:
    found = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found += float(sample.value)
    return found


def holds(text: str) -> dict[str, float]:
    """mcp_gateway_event_loop_hold_max_seconds per holder (gateway/loophold.py)."""
    return {
        sample.labels["holder"]: float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mcp_gateway_event_loop_hold_max_seconds"
    }


async def scrape(session: aiohttp.ClientSession, gw: Gateway) -> str:
    async with session.get(f"{gw.base}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def drive(session: aiohttp.ClientSession, gw: Gateway, seconds: float, events: list[Callable[[], None]]) -> int:
    """CONNECTIONS clients calling a tool back to back for `seconds`, with `events` spread over the window (a
    policy change, SIGHUP). Returns how many calls were answered."""
    headers = {**HEADERS, **gw.auth("k1"), "MCP-Protocol-Version": PROTOCOL}
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "lag", "version": "1"}},
    }
    async with session.post(gw.url("lag"), data=orjson.dumps(init), headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        headers["Mcp-Session-Id"] = resp.headers["Mcp-Session-Id"]
    done = 0
    stop_at = time.monotonic() + seconds

    async def client(n: int) -> None:
        nonlocal done
        body = {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "echo", "arguments": ARGUMENTS}}
        data = orjson.dumps(body)
        while time.monotonic() < stop_at:
            async with session.post(gw.url("lag"), data=data, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
                done += 1

    async def spread() -> None:
        for event in events:
            await asyncio.sleep(seconds / (len(events) + 1))
            event()

    await asyncio.gather(spread(), *(client(i) for i in range(CONNECTIONS)))
    return done


async def run_guard(gw: Gateway, upstream_url: str, sink: str) -> None:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        # the first health checks, the first fair shares and one audit flush before the measured window
        await drive(session, gw, 1.0, [])
        before = await scrape(session, gw)  # resets the per-scrape maximum: start-up is not measured

        def edit() -> None:
            tenants = policies(upstream_url, weight=2.0)["tenants.yaml"]
            gw.write_policies({"tenants.yaml": tenants})  # picked up by the 0.1 s poll

        answered = await drive(session, gw, LOAD_SECONDS, [edit, lambda: gw.proc.signal(signal.SIGHUP)])
        # The paced writer drains its backlog in slices after the load stops; on a busy machine that takes a
        # while. Wait for it (the wait is a bound on the test, not a timing assertion), and keep the largest
        # stall seen: every scrape resets the per-scrape maxima, so the last scrape alone would miss one.
        stall = lag = 0.0
        held: dict[str, float] = {}
        deadline = time.monotonic() + 30.0
        while True:
            await asyncio.sleep(0.3)
            after = await scrape(session, gw)
            stall = max(stall, gauge(after, "mcp_gateway_event_loop_stall_max_seconds"))
            lag = max(lag, gauge(after, "mcp_gateway_event_loop_lag_max_seconds"))
            for holder, seconds in holds(after).items():
                held[holder] = max(held.get(holder, 0.0), seconds)
            written = total(after, "mcp_gateway_audit_records_written_total", sink=sink) - total(
                before, "mcp_gateway_audit_records_written_total", sink=sink
            )
            if written >= answered or time.monotonic() > deadline:
                break
    samples = total(after, "mcp_gateway_event_loop_lag_seconds_count") - total(
        before, "mcp_gateway_event_loop_lag_seconds_count"
    )

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    print(f"{sink}: {answered} calls, {samples:.0f} probe samples, lag {lag * 1e3:.2f} ms, stall {stall * 1e3:.2f} ms")
    print("longest holds (ms):", {h: round(v * 1e3, 2) for h, v in sorted(held.items())})
    # every periodic task really ran during the window, and the load really went through the writer
    assert answered > 200, answered
    assert samples > LOAD_SECONDS / 0.01, samples  # the probe (every 5 ms here) kept running
    assert grew("mcp_gateway_audit_records_written_total", sink=sink) >= answered
    assert grew("mcp_gateway_upstream_health_checks_total", result="ok") >= 5
    assert grew("mcp_gateway_policy_reloads_total", result="ok") >= 2  # the file change and SIGHUP
    assert grew("mcp_gateway_apikey_usage_flush_total") >= 1 or sink == "file"
    # The stall is printed, not bounded: it counts the rest of the loop iteration the probe fell due in, waiting
    # for a CPU included (docs/operations.md "What a stall counts"). On a machine running slow (609 calls in 4 s)
    # it read 30 ms while no task held the loop over 3.5 ms. What this guard exists for, a task doing a whole
    # batch at once, shows in that task's own hold, bounded below.
    # who held the loop: each background task measures its own steps; the writer, the health checks, the policy
    # watcher and the metrics sampler ran in the window, so each must be there, and none may hold the loop long
    assert {"audit-writer", "health", "policy-watcher", "metrics-sampler"} <= set(held), held
    longest = max(held, key=held.__getitem__)
    assert held[longest] < STALL_BOUND_S, f"{longest} held the event loop for {held[longest] * 1000:.1f} ms"


CONFIG: dict[str, Any] = {
    "policy_poll_seconds": 0.1,
    "loop_lag_probe_seconds": 0.005,
    # large batches on a short interval: a writer that did a whole batch at once would stall for each flush
    "audit": {"batch_size": 2000, "flush_interval": 0.25},
    "api_keys": {"usage_flush_seconds": 0.2},
}


async def test_no_periodic_task_stalls_the_loop_embedded(tmp_path: Path, upstream: str) -> None:
    gw = start_gateway(
        tmp_path / "gw",
        policies(upstream),
        keys={"k1": {"tenant": "acme", "scopes": ["read", "write"], "rate_limit": HIGH}},
        config=CONFIG,
    )
    try:
        await run_guard(gw, upstream, "file")
    finally:
        gw.stop()


async def test_no_periodic_task_stalls_the_loop_redis_postgres(
    tmp_path: Path, upstream: str, redis_url: str, postgres_dsn: str
) -> None:
    async with temp_database(postgres_dsn) as dsn:
        config = {
            **CONFIG,
            "redis": {"url": redis_url, "key_prefix": f"mgwlag:{tmp_path.name}:"},
            "postgres": {"dsn": dsn},
            "audit": {**CONFIG["audit"], "sink": "postgres"},
        }
        gw = start_gateway(
            tmp_path / "gw",
            policies(upstream),
            keys={"k1": {"tenant": "acme", "scopes": ["read", "write"], "rate_limit": HIGH}},
            config=config,
        )
        try:
            await run_guard(gw, upstream, "postgres")
        finally:
            gw.stop()


# A real event loop blocked for 40 ms and timed by the clock: not a unit test (the unit suite asserts no wall-clock
# figures). The lower bound is the block itself, which no machine makes shorter.
async def test_the_probe_sees_a_blocked_loop() -> None:
    probe = LoopLagProbe(CollectorRegistry(), interval=0.005)
    probe.start(asyncio.get_running_loop())
    try:
        await asyncio.sleep(0.03)
        assert probe.samples >= 1
        time.sleep(0.04)  # noqa: ASYNC251 - holding the loop is the point: the probe's timer falls due meanwhile
        await asyncio.sleep(0.02)
    finally:
        probe.stop()
    lag = probe.lag_gauge.collect()[0].samples[0].value
    stall = probe.stall_gauge.collect()[0].samples[0].value
    # the timer fell due at most one interval into the 40 ms block; the stall is the lag less any wait for a CPU
    assert lag >= 0.03
    assert 0 < stall <= lag
