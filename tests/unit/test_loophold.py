"""Loop holds (gateway/loophold.py): each step of a background task and each GC collection, per holder."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest
from prometheus_client import CollectorRegistry

from gateway.loophold import GcHolds, LoopHolds, background
from gateway.looplag import LoopLagProbe

pytestmark = pytest.mark.unit


def burn(cpu_seconds: float) -> None:
    """CPU work of at least `cpu_seconds` of this thread's CPU time (what a hold is read in)."""
    end = time.thread_time() + cpu_seconds
    while time.thread_time() < end:
        pass


def gauge(probe: LoopLagProbe) -> dict[str, float]:
    return {s.labels["holder"]: s.value for s in probe.hold_gauge.collect()[0].samples}


async def test_each_step_of_a_background_task_is_a_hold_of_its_holder() -> None:
    holds = LoopHolds()

    async def batch() -> str:
        burn(0.005)  # one step that keeps the loop
        await asyncio.sleep(0)
        burn(0.0001)  # short steps do not hide the long one
        await asyncio.sleep(0)
        return "done"

    task = asyncio.get_running_loop().create_task(background(batch(), "writer", holds), name="writer")
    assert "batch" in repr(task)  # the task still names its coroutine
    assert await task == "done"
    assert holds.window["writer"] >= 0.005
    assert holds.longest() == holds.window["writer"]


async def test_a_cancelled_background_task_ends_as_cancelled_and_its_steps_are_counted() -> None:
    holds = LoopHolds()
    started = asyncio.Event()

    async def waits() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.get_running_loop().create_task(background(waits(), "waiter", holds))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert "waiter" in holds.window


async def test_an_exception_in_a_step_propagates_and_the_step_is_counted() -> None:
    holds = LoopHolds()

    async def fails() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await asyncio.get_running_loop().create_task(background(fails(), "failing", holds))
    assert "failing" in holds.window


def test_the_window_resets_to_what_came_since_the_last_rotation() -> None:
    holds = LoopHolds()
    reported: dict[str, float] = {}
    holds.bind(reported.__setitem__)
    holds.note("audit-writer", 0.003)
    holds.note("health", 0.001)
    holds.note("audit-writer", 0.002)  # not a new maximum
    assert reported == {"audit-writer": 0.003, "health": 0.001}
    holds.rotate()  # a scrape starts
    holds.note("health", 0.0005)  # during the scrape: belongs to the next window
    holds.reset()  # the scrape is rendered
    assert holds.window == {"health": 0.0005}
    assert reported == {"audit-writer": 0.0, "health": 0.0005}  # every holder seen is reported again
    holds.rotate()
    holds.reset()
    assert holds.longest() == 0.0


def test_each_gc_collection_is_a_hold_of_its_generation() -> None:
    holds = LoopHolds()
    gc_holds = GcHolds(holds)
    gc_holds.install()
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        gc_holds.uninstall()
    assert {"gc-gen0", "gc-gen2"} <= set(holds.window)
    gc.collect(1)  # uninstalled: no longer seen
    assert "gc-gen1" not in holds.window


async def test_the_probe_reports_holds_per_holder_and_resets_them_per_scrape() -> None:
    holds = LoopHolds()
    probe = LoopLagProbe(CollectorRegistry(), interval=0.005, holds=holds)
    probe.start(asyncio.get_running_loop())
    try:

        async def step() -> None:
            burn(0.002)

        await asyncio.get_running_loop().create_task(background(step(), "metrics-sampler", holds))
        gc.collect()
        seen = gauge(probe)
        assert seen["metrics-sampler"] >= 0.002
        assert "gc-gen2" in seen
        probe.scrape_started()()
        assert gauge(probe)["metrics-sampler"] == 0.0  # nothing held since the scrape
    finally:
        probe.stop()
    gc.collect()  # the stopped probe no longer watches the GC
    assert gauge(probe)["gc-gen2"] == 0.0
