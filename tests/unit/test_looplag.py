"""The event-loop lag probe (gateway/looplag.py) and the time slices of background batch work (gateway/pacing.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway import pacing
from gateway.looplag import SCRAPED_FILE, LoopLagProbe

pytestmark = pytest.mark.unit


def hold(seconds: float) -> None:
    """Work that keeps the event loop's thread for `seconds` (a blocking call is as good as CPU work here)."""
    time.sleep(seconds)


def values(probe: LoopLagProbe) -> tuple[float, float]:
    lag = probe.lag_gauge.collect()[0].samples[0].value
    stall = probe.stall_gauge.collect()[0].samples[0].value
    return lag, stall


def test_the_per_scrape_maximum_is_reset_by_the_scrape_but_keeps_what_came_during_it() -> None:
    probe = LoopLagProbe(CollectorRegistry())
    probe.record(0.004, 0.003)
    probe.record(0.002, 0.002)
    assert values(probe) == (0.004, 0.003)
    finished = probe.scrape_started()
    probe.record(0.001, 0.0005)  # while a (threaded) render runs: belongs to the next window
    finished()
    assert values(probe) == (0.001, 0.0005)
    finished = probe.scrape_started()
    finished()
    assert values(probe) == (0.0, 0.0)
    probe.record(0.007, 0.0)  # a process waiting for a CPU: late, but no stall of its own
    assert values(probe) == (0.007, 0.0)
    hist = {s.labels.get("le"): s.value for s in probe.histogram.collect()[0].samples if s.name.endswith("_bucket")}
    assert hist["0.005"] == 3 and hist["0.01"] == 4 and hist["+Inf"] == 4


def test_a_scrape_served_by_another_worker_resets_this_one_at_its_next_sample(tmp_path: Path) -> None:
    me = LoopLagProbe(CollectorRegistry(), shared_dir=str(tmp_path))
    other = LoopLagProbe(CollectorRegistry(), shared_dir=str(tmp_path))
    me.record(0.030, 0.030)
    me.sample()  # a sample with no scrape in between keeps the window
    assert values(me) == (0.030, 0.030)
    me.record(0.002, 0.002)  # since the last sample: may come after the other worker's scrape, so it is kept
    time.sleep(0.01)  # a distinct modification time for the touch below
    other.scrape_started()()  # the other worker serves a scrape and tells everyone
    assert (tmp_path / SCRAPED_FILE).exists()
    me.sample()
    assert values(me) == (0.002, 0.002)
    me.sample()  # seen once: the next sample keeps the window
    assert values(me) == (0.002, 0.002)


async def test_batch_work_in_slices_lets_the_loop_run_between_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pacing, "SLICE_SECONDS", 0.002)
    ticks: list[int] = []
    done: list[int] = []

    async def ticker() -> None:
        while len(done) < 40:
            ticks.append(len(done))
            await asyncio.sleep(0)

    async def batch() -> None:
        slice_ = pacing.Slice()
        for i in range(40):
            hold(0.0005)  # 20 ms of work in all, 2 ms slices
            done.append(i)
            if slice_.spent():
                await slice_.next()

    await asyncio.gather(ticker(), batch())
    # the ticker ran while the batch was half done: the batch did not hold the loop from start to end
    assert any(0 < n < 40 for n in ticks)


async def test_paced_iterates_everything_in_order_and_yields_to_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pacing, "SLICE_SECONDS", 0.001)
    seen: list[int] = []
    interleaved: list[int] = []

    async def other() -> None:
        while len(seen) < 30:
            interleaved.append(len(seen))
            await asyncio.sleep(0)

    async def consume() -> None:
        async for item in pacing.paced(range(30)):
            hold(0.0004)  # the consumer's work on each item counts towards the slice
            seen.append(item)

    await asyncio.gather(other(), consume())
    assert seen == list(range(30))
    assert any(0 < n < 30 for n in interleaved)
