"""API key usage counters: one dict update per request, written out in batches by a periodic task.

With PostgreSQL configured each flush adds the batch to `mgw_api_key_usage` (counts add up across replicas);
without it the totals stay in memory (the admin key list shows them). A failed flush puts the batch back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import structlog

from gateway.loophold import background
from gateway.pacing import Slice

log = structlog.get_logger("gateway.auth.usage")

Writer = Callable[[Sequence[tuple[str, int, datetime]]], Awaitable[None]]
_MAX_PENDING_KEYS = 100_000
# rows per write of the usage counters (a chunk is encoded on the event loop in one go)
WRITE_CHUNK = 200


class UsageCounters:
    def __init__(self) -> None:
        self._pending: dict[str, list[float]] = {}  # key id -> [count, last used (epoch)]
        self._totals: dict[str, list[float]] = {}
        self._draining: dict[str, list[float]] = {}  # taken by drain_paced(), not in the totals yet

    def hit(self, key_id: str) -> None:
        now = time.time()
        entry = self._pending.get(key_id)
        if entry is None:
            if len(self._pending) >= _MAX_PENDING_KEYS:
                return  # a flush is overdue; dropping a count beats unbounded memory
            self._pending[key_id] = [1, now]
        else:
            entry[0] += 1
            entry[1] = now

    async def drain_paced(self) -> list[tuple[str, int, datetime]]:
        """drain(), a time slice at a time: up to 100,000 keys may be pending, ~1 us each."""
        pending, self._pending = self._pending, {}
        self._draining = pending
        out: list[tuple[str, int, datetime]] = []
        slice_ = Slice()
        try:
            for kid, entry in pending.items():
                count, last = entry
                total = self._totals.setdefault(kid, [0, 0.0])
                total[0] += count
                total[1] = max(total[1], last)
                entry[0] = 0  # counted in the totals now (totals() reads what is still draining)
                out.append((kid, int(count), datetime.fromtimestamp(last, UTC)))
                if slice_.spent():
                    await slice_.next()
        except BaseException:
            # cancelled between slices (stop() cancels the flush task): what was counted goes back to pending with
            # what was not reached yet, so the final flush still writes every count
            self.restore(out)
            for kid, entry in pending.items():
                if entry[0] > 0:
                    back = self._pending.setdefault(kid, [0, 0.0])
                    back[0] += entry[0]
                    back[1] = max(back[1], entry[1])
            raise
        finally:
            self._draining = {}
        return out

    def restore(self, batch: Sequence[tuple[str, int, datetime]]) -> None:
        """Put back a batch that could not be written (the totals already counted it)."""
        for kid, count, last in batch:
            total = self._totals.get(kid)
            if total is not None:
                total[0] -= count
            entry = self._pending.setdefault(kid, [0, 0.0])
            entry[0] += count
            entry[1] = max(entry[1], last.timestamp())

    def totals(self) -> dict[str, tuple[int, float]]:
        """Requests per key since this process started (flushed or not) and the last use (epoch)."""
        out = {k: (int(v[0]), v[1]) for k, v in self._totals.items()}
        for k, (count, last) in [*self._draining.items(), *self._pending.items()]:
            c, lu = out.get(k, (0, 0.0))
            out[k] = (c + int(count), max(lu, last))
        return out


class UsageFlusher:
    def __init__(
        self,
        counters: UsageCounters,
        interval: float,
        writer: Writer | None,
        on_flush: Callable[[str], None] | None = None,
    ) -> None:
        self._counters = counters
        self._interval = interval
        self._writer = writer
        self._on_flush = on_flush
        self._task: asyncio.Task[None] | None = None

    async def flush(self) -> None:
        batch = await self._counters.drain_paced()
        if not batch or self._writer is None:
            return
        # in chunks: the store encodes a chunk's rows in one go on the event loop (~3 us a row)
        for start in range(0, len(batch), WRITE_CHUNK):
            chunk = batch[start : start + WRITE_CHUNK]
            try:
                await self._writer(chunk)
            except Exception as exc:  # the store is down: keep the unwritten counts for the next round
                self._counters.restore(batch[start:])
                log.warning("API key usage flush failed", error=type(exc).__name__, keys=len(batch) - start)
                if self._on_flush:
                    self._on_flush("error")
                return
        if self._on_flush:
            self._on_flush("ok")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    def start(self) -> None:
        self._task = asyncio.create_task(background(self._run(), "apikey-usage-flush"), name="apikey-usage-flush")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()  # the last counts of a stopping process are not lost
