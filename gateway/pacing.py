"""Cooperative time slices for batch work done on the event loop.

A background task that processes a batch in one go holds the loop for the whole batch, and every request that
becomes ready meanwhile waits (issue 22: a 500-record audit batch held it ~7 ms, the p99 at one connection). Work
done in slices of about `SLICE_SECONDS` that yield to the loop in between keeps that wait below a millisecond and
costs one loop iteration per slice (a few microseconds), while the total work stays the same.

Why not a thread: this work is Python code (record building, regexes, orjson, asyncpg's encoder) that holds the GIL,
so a thread would hold the loop just the same, in `sys.getswitchinterval()` chunks (5 ms by default).

    slice_ = Slice()
    for item in batch:
        work(item)
        if slice_.spent():
            await slice_.next()
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

T = TypeVar("T")

# the longest stretch a background batch holds the event loop before letting ready requests in
SLICE_SECONDS = 0.0005

_clock = time.perf_counter


class Slice:
    """The time budget of the current slice; `next()` yields to the loop and starts the next one."""

    __slots__ = ("_budget", "_deadline")

    def __init__(self, budget: float | None = None) -> None:
        self._budget = SLICE_SECONDS if budget is None else budget
        self._deadline = _clock() + self._budget

    def spent(self) -> bool:
        return _clock() >= self._deadline

    async def next(self) -> None:
        await asyncio.sleep(0)  # one loop iteration: ready callbacks and I/O run before we go on
        self._deadline = _clock() + self._budget


async def paced(items: Iterable[T], budget: float | None = None) -> AsyncIterator[T]:
    """`items` as an async iterator that yields to the loop whenever the consumer's work on them (done between two
    steps of this iterator) has spent the slice: for consumers that accept async iterables (asyncpg's COPY)."""
    slice_ = Slice(budget)
    for item in items:
        yield item
        if slice_.spent():
            await slice_.next()
