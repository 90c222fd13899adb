"""Periodic tasks that work in time slices (issue 22): the same results as in one go, a chunk at a time."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from gateway import pacing
from gateway.auth import usage
from gateway.auth.usage import UsageCounters, UsageFlusher

pytestmark = pytest.mark.unit


async def test_usage_flush_of_many_keys_goes_in_chunks_and_a_failed_chunk_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pacing, "SLICE_SECONDS", 0.0)  # a loop iteration after every key
    monkeypatch.setattr(usage, "WRITE_CHUNK", 10)
    counters = UsageCounters()
    for i in range(35):
        for _ in range(i + 1):
            counters.hit(f"k{i}")
    written: list[list[tuple[str, int, datetime]]] = []
    seen_mid_drain: list[int] = []

    async def writer(batch: list[tuple[str, int, datetime]]) -> None:
        if len(written) == 2:
            raise ConnectionError("down")  # the third chunk fails
        written.append(batch)

    async def watch() -> None:
        # while the drain is paused between slices, the totals still count every request exactly once
        for _ in range(20):
            seen_mid_drain.append(sum(n for n, _ in counters.totals().values()))
            await asyncio.sleep(0)

    await asyncio.gather(UsageFlusher(counters, 60, writer).flush(), watch())
    assert [len(c) for c in written] == [10, 10]
    assert set(seen_mid_drain) == {sum(range(1, 36))}
    # what was written stays written; the rest is pending again, counted once
    assert sum(n for n, _ in counters.totals().values()) == sum(range(1, 36))
    rest = await counters.drain_paced()
    assert sorted(k for k, _, _ in rest) == sorted(f"k{i}" for i in range(20, 35))
    assert {k: n for k, n, _ in rest} == {f"k{i}": i + 1 for i in range(20, 35)}


async def test_fair_shares_of_many_tenants_are_allocated_off_the_loop_with_the_same_result() -> None:
    from prometheus_client import CollectorRegistry

    from gateway.ratelimit import shares as shares_mod
    from gateway.ratelimit.metrics import RateLimitMetrics
    from gateway.ratelimit.shares import FairParams, FairShares

    params = FairParams(capacity=1000.0, interval=1.0, active_window=5.0, headroom=0.2, weights={"t3": 4.0})
    demand = {f"t{i}": float(5 + i) for i in range(shares_mod.INLINE_TENANTS * 3)}
    now = [99.0]
    threaded = FairShares(lambda: params, RateLimitMetrics(CollectorRegistry()), clock=lambda: now[0])
    for tenant, n in demand.items():
        threaded.charge(tenant, n)
    now[0] = 100.0  # the counts cover a whole interval (a partial one is scaled up to a whole one)
    await threaded.tick(99, params)
    inline = FairShares(lambda: params, RateLimitMetrics(CollectorRegistry()), clock=lambda: 100.0)
    inline.recompute(demand, params, 100.0)
    assert threaded.shares == inline.shares and len(inline.shares) == len(demand)
    assert threaded.computed == 1


async def test_ip_block_sync_expires_and_keeps_blocks_across_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import CollectorRegistry

    from gateway.ratelimit.ipblock import IpBlocker
    from gateway.ratelimit.metrics import RateLimitMetrics

    monkeypatch.setattr(pacing, "SLICE_SECONDS", 0.0)
    now = [1000.0]
    blocker = IpBlocker(RateLimitMetrics(CollectorRegistry()), clock=lambda: now[0])
    for i in range(50):
        blocker.block(f"10.0.0.{i}", 10.0 if i % 2 else 1.0)
    now[0] += 5.0
    await blocker.sync_once()
    assert sorted(blocker.blocked) == sorted(f"10.0.0.{i}" for i in range(1, 50, 2))


async def test_a_flush_cancelled_between_slices_keeps_every_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """stop() cancels the flush task; cancelled while paused between two slices, the counts already taken and those
    not reached yet both go back to pending, so the final flush writes every one (the review lost 984 of 1,000)."""
    from gateway.auth import usage

    class OneAtATime:
        def spent(self) -> bool:
            return True

        async def next(self) -> None:
            await asyncio.sleep(0)

    monkeypatch.setattr(usage, "Slice", OneAtATime)
    counters = usage.UsageCounters()
    for i in range(1000):
        counters.hit(f"k{i}")
    task = asyncio.ensure_future(counters.drain_paced())
    for _ in range(16):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sum(n for n, _ in counters.totals().values()) == 1000  # counted once, none lost
    rest = await counters.drain_paced()
    assert len(rest) == 1000 and sum(n for _, n, _ in rest) == 1000
