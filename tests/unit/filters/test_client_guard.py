"""The client guard (stage 1, gateway/filters/client_guard.py): a blocked IP is refused with the time left, the
per-IP rate refuses (or in shadow mode records) a flood, and allowlisted networks are exempt from both."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.errors import IpBlocked, RateLimited
from gateway.filters.client_guard import ClientGuard
from gateway.ratelimit.metrics import RateLimitMetrics
from gateway.ratelimit.service import RateLimiter
from gateway.ratelimit.store import MemoryStore
from gateway.testing import FakeClock, context, snapshot

pytestmark = pytest.mark.unit

FLOODER = "198.51.100.7"


def guard(limits: dict[str, Any]) -> tuple[ClientGuard, RateLimiter, FakeClock]:
    snap = snapshot(limits=limits)
    limiter = RateLimiter(RateLimitMetrics(CollectorRegistry()), None, "mgw:", lambda: snap)
    clock = FakeClock()
    limiter.ip_store = MemoryStore(clock)
    return ClientGuard(limiter.compiled(snap), limiter), limiter, clock


async def admitted(flt: ClientGuard, ip: str, n: int) -> int:
    ok = 0
    for _ in range(n):
        try:
            await flt(context(client_ip=ip))
            ok += 1
        except RateLimited:
            pass
    return ok


async def test_without_limits_everyone_passes() -> None:
    flt, _, _ = guard({})
    assert await admitted(flt, FLOODER, 50) == 50


async def test_the_per_ip_rate_refuses_a_flood_and_not_other_clients() -> None:
    flt, _, _ = guard({"ip": {"rate": 5, "per": "minute", "burst": 5}})
    assert await admitted(flt, FLOODER, 8) == 5
    with pytest.raises(RateLimited) as info:
        await flt(ctx := context(client_ip=FLOODER))
    assert info.value.retry_after is not None and info.value.retry_after > 0
    assert ctx.notes["limit"] == "ip" and info.value.data["limit"] == "ip"
    assert await admitted(flt, "198.51.100.8", 5) == 5


async def test_the_rate_refills_with_time() -> None:
    flt, _, clock = guard({"ip": {"rate": 60, "per": "minute", "burst": 1}})
    assert await admitted(flt, FLOODER, 2) == 1
    clock.advance(1.0)
    assert await admitted(flt, FLOODER, 1) == 1


async def test_shadow_mode_records_instead_of_refusing() -> None:
    flt, _, _ = guard({"ip": {"rate": 1, "per": "minute", "burst": 1, "mode": "shadow"}})
    ctx = context(client_ip=FLOODER)
    await flt(context(client_ip=FLOODER))
    await flt(ctx)
    assert [(d.stage, d.reason) for d in ctx.shadow] == [("client_guard", "rate_limited:ip")]


async def test_a_blocked_ip_is_refused_with_the_time_left() -> None:
    flt, limiter, _ = guard({})
    limiter.blocker.block(FLOODER, 120)
    with pytest.raises(IpBlocked) as info:
        await flt(context(client_ip=FLOODER))
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 120
    await flt(context(client_ip="198.51.100.8"))


async def test_allowlisted_networks_skip_blocks_and_rates() -> None:
    flt, limiter, _ = guard(
        {"ip": {"rate": 1, "per": "minute", "burst": 1}, "ddos": {"allowlist": ["198.51.100.0/24"]}}
    )
    limiter.blocker.block(FLOODER, 120)
    assert await admitted(flt, FLOODER, 10) == 10
    assert await admitted(flt, "203.0.113.9", 3) == 1
