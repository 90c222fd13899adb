"""Event-loop lag: how late a periodic timer callback runs, i.e. how long a ready request may wait for the loop.

A timer is due every `interval` seconds; when it runs, its lateness (now - due) is the time the loop spent on other
work, or the process spent waiting for a CPU, after the timer fell due. One timer callback per interval, no task:
the probe costs a few microseconds per run.

    mcp_gateway_event_loop_lag_seconds         histogram of every lateness seen (what a request may wait)
    mcp_gateway_event_loop_lag_max_seconds     the longest lateness since the previous scrape
    mcp_gateway_event_loop_stall_max_seconds   the longest lateness not spent waiting for a CPU, since the previous
                                               scrape: how long the loop itself was kept busy (a stall)
    mcp_gateway_event_loop_hold_max_seconds    {holder}: the longest single hold of the loop by each background task
                                               and GC generation since the previous scrape (gateway/loophold.py)

What a stall counts: everything the loop ran between the timer falling due and the timer running, i.e. the rest of
the loop iteration it fell due in. With one connection that is mostly one callback; with 32 busy connections it is
every ready request the iteration serves (the bare aiohttp proxy reads ~13 ms there with no background work at
all). So the stall is the honest "how long may a ready request wait" figure, and the holds say who held the loop:
issue 22's per-task budget (1 ms) is checked on the holds, the stall is reported beside them.

The two differ on a busy host: a process that waits for a CPU (other processes, a CPU quota) is late without any
code of its own holding the loop. On Linux the probe reads the loop thread's run-queue wait
(`/proc/thread-self/schedstat`, one pread per run) and takes what the thread waited for a CPU since the previous run
off the lateness; elsewhere the stall is the lateness. The wait since the previous run may partly precede the due
time, so the stall can be read a little short on a busy host, never long.

Resolution: uvloop keeps its timers in whole milliseconds, so an idle loop reads 0-1 ms; a stall in progress when
the timer falls due is read exactly (the timer runs as soon as the stall ends). A stall shorter than `interval`
is seen only when the timer falls due during it, so the histogram's tail, not one sample, says how often stalls
happen.

Reset on scrape with workers (`PROMETHEUS_MULTIPROC_DIR`): the gauges are `livemax` over the live workers, and a
scrape is served by one of them. That worker resets its own window and touches `<dir>/looplag.scraped`; the others
see the touch at their next metrics sample (every 2 s) and reset then, keeping what they saw since their previous
sample, so a stall is reported at least once (at worst in two consecutive scrapes), never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, Histogram

from gateway.loophold import HOLDS, GcHolds, LoopHolds
from gateway.metrics import GatewayMetrics, multiprocess_dir

LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DEFAULT_INTERVAL = 0.025
SCRAPED_FILE = "looplag.scraped"


class LoopLagProbe:
    def __init__(
        self,
        registry: CollectorRegistry,
        interval: float = DEFAULT_INTERVAL,
        shared_dir: str | None = None,
        holds: LoopHolds = HOLDS,
    ) -> None:
        self.interval = interval
        self.histogram = Histogram(
            "mcp_gateway_event_loop_lag_seconds",
            "How late a timer due every few milliseconds ran: what a ready request may wait for the event loop",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.lag_gauge = Gauge(
            "mcp_gateway_event_loop_lag_max_seconds",
            "The longest event-loop lag seen since the previous scrape",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.stall_gauge = Gauge(
            "mcp_gateway_event_loop_stall_max_seconds",
            "The longest event-loop lag since the previous scrape that was not spent waiting for a CPU: how long "
            "the loop was kept busy",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.hold_gauge = Gauge(
            "mcp_gateway_event_loop_hold_max_seconds",
            "The longest single hold of the event loop by a background task step or a GC collection since the "
            "previous scrape, per holder",
            ["holder"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.holds = holds
        self._gc_holds = GcHolds(holds)
        self._observe = self.histogram.observe
        self._scraped = Path(shared_dir) / SCRAPED_FILE if shared_dir else None
        self._scraped_seen = self._scraped_stamp()
        # [lag, stall]: the longest since the last reset (reported), and since the last rotation (a metrics sample
        # or the start of a scrape)
        self.window = [0.0, 0.0]
        self._segment = [0.0, 0.0]
        self.samples = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._clock: Callable[[], float] = time.monotonic
        self._schedstat: int | None = None
        self._waited_ns = 0

    # ------------------------------------------------------------------ the probe

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start probing `loop`; call it from the loop's thread (the run-queue wait read is that thread's)."""
        self._loop = loop
        self.holds.bind(self._set_hold)
        self._gc_holds.install()
        # lateness is read on the monotonic clock with sub-millisecond precision; uvloop's loop.time() counts whole
        # milliseconds on the same clock (CLOCK_MONOTONIC). A loop on another clock is read on its own.
        if abs(loop.time() - time.monotonic()) > 0.5:
            self._clock = loop.time
        with contextlib.suppress(OSError):
            self._schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            self._waited_ns = self._run_queue_wait()
        self._schedule()

    def stop(self) -> None:
        self._gc_holds.uninstall()
        self.holds.bind(None)
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        fd, self._schedstat = self._schedstat, None
        if fd is not None:
            os.close(fd)

    def _run_queue_wait(self) -> int:
        """Nanoseconds the loop thread has spent runnable but not running (second field of schedstat)."""
        assert self._schedstat is not None
        try:
            return int(os.pread(self._schedstat, 96, 0).split()[1])
        except (OSError, ValueError, IndexError):
            os.close(self._schedstat)
            self._schedstat = None
            return 0

    def _schedule(self) -> None:
        loop = self._loop
        assert loop is not None
        self._due = due = loop.time() + self.interval
        self._handle = loop.call_at(due, self._tick)

    def _tick(self) -> None:
        lag = max(self._clock() - self._due, 0.0)
        stall = lag
        if self._schedstat is not None:
            waited = self._run_queue_wait()
            off_cpu = (waited - self._waited_ns) / 1e9
            self._waited_ns = waited
            stall = lag - off_cpu if off_cpu < lag else 0.0
        self.record(lag, stall)
        self._schedule()

    def record(self, lag: float, stall: float) -> None:
        self.samples += 1
        self._observe(lag)
        segment, window = self._segment, self.window
        segment[0] = max(segment[0], lag)
        segment[1] = max(segment[1], stall)
        if lag > window[0]:
            window[0] = lag
            self.lag_gauge.set(lag)
        if stall > window[1]:
            window[1] = stall
            self.stall_gauge.set(stall)

    # ------------------------------------------------------------------ reset on scrape

    def _set_hold(self, holder: str, seconds: float) -> None:
        self.hold_gauge.labels(holder).set(seconds)

    def _rotate(self) -> None:
        self._segment = [0.0, 0.0]
        self.holds.rotate()

    def _reset(self) -> None:
        """Start a new window with what the current segment saw (it may come after the scrape)."""
        lag, stall = self.window = list(self._segment)
        self.lag_gauge.set(lag)
        self.stall_gauge.set(stall)
        self.holds.reset()

    def scrape_started(self) -> Callable[[], None]:
        """Before this process renders a scrape: what it returns, called once the scrape is rendered, starts the
        next window with the lags seen meanwhile (a multiprocess render runs in a thread, the loop goes on)."""
        self._rotate()

        def finished() -> None:
            self._reset()
            if self._scraped is not None:
                with contextlib.suppress(OSError):
                    self._scraped.touch()
                    self._scraped_seen = self._scraped_stamp()

        return finished

    def sample(self) -> None:
        """Every metrics sample (each worker, every 2 s): a scrape served by another worker resets our window too,
        keeping what we saw since our previous sample (it may have come after that scrape)."""
        if self._scraped is not None:
            stamp = self._scraped_stamp()
            if stamp != self._scraped_seen:
                self._scraped_seen = stamp
                self._reset()
        self._rotate()

    def _scraped_stamp(self) -> int:
        if self._scraped is None:
            return 0
        try:
            return os.stat(self._scraped).st_mtime_ns
        except OSError:
            return 0


LOOP_LAG: web.AppKey[LoopLagProbe] = web.AppKey("loop_lag_probe", LoopLagProbe)


def install(app: web.Application, metrics: GatewayMetrics, interval: float = DEFAULT_INTERVAL) -> LoopLagProbe:
    probe = LoopLagProbe(metrics.registry, interval, multiprocess_dir())
    app[LOOP_LAG] = probe
    metrics.add_sampler(probe.sample)
    metrics.add_scrape_hook(probe.scrape_started)

    async def running(app: web.Application) -> AsyncIterator[None]:
        probe.start(asyncio.get_running_loop())
        yield
        probe.stop()

    app.cleanup_ctx.append(running)
    return probe
