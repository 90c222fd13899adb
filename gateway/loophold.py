"""How long each background task, and the cyclic GC, holds the event loop at a time (issue 22's per-hold budget).

The loop-lag probe (gateway/looplag.py) reads how late a timer runs. Under concurrent load that lateness includes a
whole loop iteration of request work: with 32 ready connections the loop serves every ready socket (and the
request steps they wake) before it comes back to its timers, ~32 x 100 us, so the probe's stall says how long a
ready request may wait, not who held the loop. Issue 22's budget is per holder: no background task keeps the loop
longer than 1 ms at a time. So the background tasks also measure themselves:

    hold   one step of a background task's coroutine, from the loop resuming it to its next await (the time no other
           callback can run), or one collection of the cyclic GC (which runs inside whatever callback allocated)

A hold is read in the loop thread's CPU time (`time.thread_time`), so a busy shared host preempting the process does
not lengthen it; a step that blocked in a system call would be read short, which is why none of these tasks does
blocking I/O on the loop (files and fsync go through threads), and the probe's stall still sees it.

    mcp_gateway_event_loop_hold_max_seconds{holder}   the longest hold of each holder since the previous scrape

`holder` is a fixed name given in the code (`audit-writer`, `health`, `gc-gen1`, ...), never a value from a request
or the configuration. A task is measured when it is created through `background(coro, holder)`; request handling
is not (it is what the holds are compared with, and wrapping it would add a call per request step).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")

_cpu = time.thread_time


class LoopHolds:
    """The longest hold per holder: since the last reset (`window`, reported) and since the last rotation."""

    __slots__ = ("_on_new_max", "_segment", "window")

    def __init__(self) -> None:
        self.window: dict[str, float] = {}
        self._segment: dict[str, float] = {}
        self._on_new_max: Callable[[str, float], None] | None = None

    def note(self, holder: str, seconds: float) -> None:
        segment = self._segment
        if seconds > segment.get(holder, 0.0):
            segment[holder] = seconds
        if seconds > self.window.get(holder, 0.0):
            self.window[holder] = seconds
            if self._on_new_max is not None:
                self._on_new_max(holder, seconds)

    def bind(self, on_new_max: Callable[[str, float], None] | None) -> None:
        """`on_new_max(holder, seconds)` on every new window maximum (the metrics gauge)."""
        self._on_new_max = on_new_max

    def rotate(self) -> None:
        self._segment = {}

    def reset(self) -> None:
        """A new window that starts with what the current segment saw; every holder seen so far is reported again
        (0 when it held nothing since)."""
        seen = set(self.window) | set(self._segment)
        self.window = dict(self._segment)
        if self._on_new_max is not None:
            for holder in seen:
                self._on_new_max(holder, self.window.get(holder, 0.0))

    def longest(self) -> float:
        return max(self.window.values(), default=0.0)


# one per process: background tasks are started by many modules, and a process has one event loop
HOLDS = LoopHolds()


class _Timed(Coroutine[Any, Any, T]):
    """`coro` with each step's CPU time noted as a hold of `holder`; what asyncio.Task needs of a coroutine."""

    __slots__ = ("_coro", "_holder", "_holds")

    def __init__(self, coro: Coroutine[Any, Any, T], holder: str, holds: LoopHolds) -> None:
        self._coro = coro
        self._holder = holder
        self._holds = holds

    def send(self, value: Any) -> Any:
        start = _cpu()
        try:
            return self._coro.send(value)
        finally:
            self._holds.note(self._holder, _cpu() - start)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        start = _cpu()
        try:
            if val is None and tb is None:
                return self._coro.throw(typ)
            return self._coro.throw(typ, val, tb)  # the three-argument form, for callers that still use it
        finally:
            self._holds.note(self._holder, _cpu() - start)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, T]:
        return self._coro.__await__()

    def __getattr__(self, name: str) -> Any:
        # what asyncio's task repr and stack helpers read of a coroutine (__qualname__, cr_frame, cr_running, ...)
        return getattr(self._coro, name)


def background(coro: Coroutine[Any, Any, T], holder: str, holds: LoopHolds = HOLDS) -> Coroutine[Any, Any, T]:
    """`coro` for `loop.create_task`, its steps measured as holds of `holder` (a fixed name, see the module doc)."""
    return _Timed(coro, holder, holds)


class GcHolds:
    """Each cyclic-GC collection as a hold of `gc-gen<N>` (a gc.callbacks hook: two calls per collection)."""

    HOLDERS = ("gc-gen0", "gc-gen1", "gc-gen2")

    def __init__(self, holds: LoopHolds = HOLDS) -> None:
        self._holds = holds
        self._started = 0.0
        self._installed = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = _cpu()
        else:
            self._holds.note(self.HOLDERS[info["generation"]], _cpu() - self._started)

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False
