"""Tenant fairness through a real gateway process (issue 15, item 6), embedded and with Redis.

Three tenants of equal weight share a global 40 req/s (burst 20): a fair share is 13.3 req/s. The gateway's own audit
records say which request was admitted and when it arrived, so the counts below are the limiter's, whatever the
test process's scheduling did to its clients; the fair shares are read from /metrics.

Fair shares are recomputed every 3 s here (the default is 1 s). The fix does not depend on the interval: a newcomer
reallocates every share on its first request. Without it, a newcomer waited for the next recomputation while the
pair held the whole global rate, and got only the tokens it won in races against the pair's far more frequent
requests. So the newcomer joins just after a recomputation: the old behaviour then lasts its whole first second,
wherever the machine's noise puts the boundary (reverted, it got 7 and 8 of the 12 this test asks for).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.tenant_load import TenantLoad, decisions, window
from tests.harness import (
    Gateway,
    RedisInstance,
    default_policies,
    metric_sample,
    running,
    start_gateway,
    start_upstream,
)

pytestmark = pytest.mark.e2e

TENANTS = ("a", "b", "c")
CAPACITY = 40.0
GLOBAL_BURST = 20
FAIR = CAPACITY / len(TENANTS)
INTERVAL = 3.0
KEYS = {f"k{t}": {"tenant": t, "scopes": ["read", "write"]} for t in TENANTS}
HEAVY = 60.0  # req/s offered by each tenant of the saturated pair (1.5x the global rate each)


def policies(upstream_url: str) -> dict[str, Any]:
    # the SDK upstream may answer slowly on a busy machine: admitted calls must not wait for a pooled connection
    pol = default_policies(upstream_url, owner="a", shared_with=["b", "c"], pool={"max_connections": 2000})
    pol["tenants.yaml"] = {"tenants": {"a": {"servers": ["example"]}, "b": {"servers": []}, "c": {"servers": []}}}
    pol["limits.yaml"] = {
        "tiers": {},
        "global": {"rate": CAPACITY, "per": "second", "burst": GLOBAL_BURST},
        "fairness": {"interval_seconds": INTERVAL},
        "costs": {"initialize": 0},  # only the tools/call load is charged
    }
    return pol


@pytest.fixture(params=["embedded", "redis"])
def limiter_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "embedded":
        return {}
    redis: RedisInstance = request.getfixturevalue("private_redis")
    return {"redis": {"url": redis.url}}


def start(tmp_path: Path, limiter_config: dict[str, Any]) -> tuple[Gateway, Any]:
    up = start_upstream(tmp_path, json_response=True)
    # three keys' connections from one address: the per-peer cap is not what is tested here
    config = {**limiter_config, "audit": {"log_records": False}, "http": {"max_connections_per_ip": 4096}}
    return start_gateway(tmp_path / "gw", policies(up.url), keys=KEYS, config=config), up


@dataclass
class Stopping:
    """Stops the load threads however the test ends (they would keep the test process from exiting)."""

    flag: threading.Event

    def stop(self) -> None:
        self.flag.set()


def heavy(gw: Gateway, key_id: str) -> TenantLoad:
    return TenantLoad(gw, key_id, HEAVY, max_credit=0.25 * HEAVY, max_in_flight=512)


async def shares(http: aiohttp.ClientSession, gw: Gateway) -> dict[str, float]:
    """The fair shares the gateway enforces now, as it exports them (after each recomputation)."""
    async with http.get(f"{gw.base}/metrics") as resp:
        text = await resp.text()
    return {t: metric_sample(text, "mcp_gateway_ratelimit_fair_share_rps", tenant=t) for t in TENANTS}


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.1)


async def sleep_until_phase(phase: float) -> None:
    """Until `phase` (a fraction) of the gateway's next fair-share interval: its epochs are wall-clock multiples of
    the interval, recomputed just after each boundary (with Redis, a fifth of an interval later)."""
    now = time.time()
    at = math.floor(now / INTERVAL) * INTERVAL + phase * INTERVAL
    if at < now + 0.05:
        at += INTERVAL
    await asyncio.sleep(at - time.time())


def statuses_ok(*loads: TenantLoad) -> None:
    for load in loads:
        assert load.statuses and set(load.statuses) <= {200, 429}, (load.key_id, sorted(set(load.statuses)))


async def test_a_newcomer_gets_its_fair_share_within_a_second(tmp_path: Path, limiter_config: dict[str, Any]) -> None:
    gw, up = start(tmp_path, limiter_config)
    a, c = heavy(gw, "ka"), heavy(gw, "kc")
    # the newcomer asks for a little more than its share: before the fix it got only what it won in races against
    # the pair's far more frequent requests for the global tier's tokens
    b = TenantLoad(gw, "kb", 1.2 * FAIR, max_credit=8.0, max_in_flight=512)
    stop, join = threading.Event(), threading.Event()
    with running(gw, up), running(Stopping(stop)):
        pair = [a.in_thread(stop), c.in_thread(stop)]
        newcomer = b.in_thread(stop, join)  # session open, pinging: not charged yet
        async with aiohttp.ClientSession() as http:

            async def pair_settled() -> bool:
                got = await shares(http, gw)
                return got["b"] == 0 and all(got[t] == pytest.approx(CAPACITY / 2, rel=0.05) for t in "ac")

            await until(pair_settled)  # a recomputation measured the pair: each holds half the global rate
            # join a little after the next recomputation (the gateway's epochs are wall-clock multiples of the
            # interval; with Redis the shares are read back a fifth of an interval after the boundary)
            await sleep_until_phase(0.35)
            join.set()

            async def all_three() -> bool:
                got = await shares(http, gw)
                return got["b"] > 0 and got["a"] > 0 and got["c"] > 0 and got["b"] < CAPACITY / 2

            await until(all_three)  # the next recomputation measured the newcomer too
            got = await shares(http, gw)
            # the pair shares what the newcomer leaves (all of the global rate: everyone wants more than it gets,
            # unless a starved test process made the newcomer ask for less than its share)
            assert got["a"] == pytest.approx(got["c"]) and sum(got.values()) == pytest.approx(CAPACITY, rel=0.01)
            await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*pair, newcomer)
    assert gw.stop() == 0  # the audit writer drains on SIGTERM
    statuses_ok(a, b, c)
    audit = tmp_path / "gw" / "audit.jsonl"
    seen = {t: decisions(audit, t) for t in TENANTS}
    first = seen["b"][0].at
    got_b, refused_b = window(seen["b"], first, 1.0)
    # the first second of the newcomer, as the gateway saw it: at least 90% of its fair share admitted, its fair
    # share being the smaller of its demand and the others' (a starved test process may have offered less than
    # the 16 requests asked for; before the fix the newcomer got 0 of 40 in the simulation, 8-9 of 20 per second
    # in the run)
    offered = got_b + refused_b
    assert got_b >= 0.9 * min(FAIR, offered), (got_b, refused_b)
    # and it asked for more than its share: over its first two seconds it was refused too
    assert sum(window(seen["b"], first, 2.0)) > 2.0 * FAIR, window(seen["b"], first, 2.0)
    # the pair was saturating the global rate up to the newcomer's arrival, and nobody got more than it allows
    before = [window(seen[t], first - 1.0, 1.0) for t in "ac"]
    assert sum(n for n, _ in before) >= 0.9 * CAPACITY and all(r > 0 for _, r in before), before
    total = sum(window(seen[t], first, 1.0)[0] for t in TENANTS)
    assert total <= CAPACITY + GLOBAL_BURST, total


async def test_a_small_tenant_under_its_share_is_not_refused_at_start_up(
    tmp_path: Path, limiter_config: dict[str, Any]
) -> None:
    gw, up = start(tmp_path, limiter_config)
    small = 0.5 * FAIR
    # the small tenant's requests are paced one at a time, so a stall of the test process never bunches them
    a, c, b = heavy(gw, "ka"), heavy(gw, "kc"), TenantLoad(gw, "kb", small, max_credit=1.0)
    stop = threading.Event()
    with running(gw, up), running(Stopping(stop)):
        # all three from the limiter's first request, 0.6 of an interval before a recomputation: the first one
        # measures 0.4 of an interval of everyone's demand
        await sleep_until_phase(0.6)
        tasks = [load.in_thread(stop) for load in (a, b, c)]
        await asyncio.sleep(5.5)
        stop.set()
        await asyncio.gather(*tasks)
    assert gw.stop() == 0
    statuses_ok(a, b, c)
    audit = tmp_path / "gw" / "audit.jsonl"
    seen = {t: decisions(audit, t) for t in TENANTS}
    start_at = min(d.at for t in TENANTS for d in seen[t][:1])
    got_b, refused_b = window(seen["b"], start_at, 5.0)
    # at least 90% of what it asked for, in its first second and over the first five (before the fix: 5-11 req/s
    # refused for ~5 s; a partial first interval taken for a whole one then refused it for the next interval)
    first_got, first_refused = window(seen["b"], start_at, 1.0)
    assert first_got >= 0.9 * (first_got + first_refused), (first_got, first_refused)
    assert got_b >= 0.9 * (got_b + refused_b), (got_b, refused_b)
    assert got_b + refused_b >= 0.5 * small * 5.0  # it did ask (the test process was not starved throughout)
    # the pair was really contending for the rest
    for t in "ac":
        assert window(seen[t], start_at, 5.0)[1] > 0
    total = sum(window(seen[t], start_at, 5.0)[0] for t in TENANTS)
    assert total <= CAPACITY * 5.0 + GLOBAL_BURST, total
