"""AuditPipeline: the chain observer that records every operation without ever making a request wait.

    request path          observe(ctx) -> capture -> deque.append        (synchronous, O(1), never awaits)
    writer task           batch -> build + sanitize + seal (hash chain) -> structured log
                          -> sink (PostgreSQL COPY / JSONL file); sink down -> spool (fsync) -> replay later

The writer never holds the event loop for a whole batch: it builds, seals and encodes records in slices of about
half a millisecond (gateway/pacing.py) and yields to the loop between them, so a request that arrives meanwhile
waits for one slice, not for the batch (issue 22: 500 records at once held the loop ~7 ms, the p99 at one
connection). Slices run one after the other in the one writer task, so the hash chain stays in record order; the
batch still reaches the sink as one write (one COPY, one fsync).

The queue is bounded: when it is full the record is dropped and counted (`records_dropped_total{reason=
"queue_full"}`), because blocking a request on audit is the one thing the design rules out. With the default
100 000 slots that only happens if the sink and the spool disk are both slower than the request rate for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from gateway.audit.files import EncodedBatch, append_synced, encode_lines
from gateway.audit.hashchain import HashChain
from gateway.audit.journal import AuditJournal, journal_dir
from gateway.audit.metrics import AuditMetrics
from gateway.audit.record import AuditEvent, RiskRules, build_record, capture
from gateway.audit.recordlog import RecordLog
from gateway.audit.sanitize import SanitizeLimits
from gateway.audit.sinks import AuditSink
from gateway.audit.spool import AuditSpool
from gateway.loophold import background
from gateway.pacing import SLICE_SECONDS, Slice

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.settings import AuditSettings

log = structlog.get_logger("gateway.audit")

# the share of a slice spent sealing records; the structured log line of what it sealed (rendered and written after
# it, ~a third of the sealing cost) takes the rest, so sealing + logging stays within one slice (measured as the
# `audit-writer` loop hold, gateway/loophold.py: sealing a full slice and then logging it held the loop ~1.5 slices)
SEAL_SHARE = 0.6


class AuditPipeline:
    def __init__(
        self,
        settings: AuditSettings,
        metrics: AuditMetrics,
        sink: AuditSink | None,
        spool_path: Path,
        *,
        chain: HashChain | None = None,
        journal: bool = False,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._sink = sink
        self._spool = AuditSpool(spool_path)
        # answers are journaled ahead of their records only where a sink keeps records (not for `sink: log`)
        self.journal: AuditJournal | None = (
            AuditJournal(journal_dir(spool_path), self._spool.token) if journal and sink is not None else None
        )
        # outside the spool's name space (`<spool>.<token>...`), so it is never adopted and replayed
        self._rejected_path = spool_path.with_name(f"{spool_path.stem}.rejected.jsonl")
        self._chain = chain or HashChain()
        self._risk = RiskRules(settings.risk)
        self._limits = SanitizeLimits(max_string=settings.max_value_length)
        self._queue: deque[AuditEvent] = deque()
        self._maxsize = settings.queue_size
        self._batch = settings.batch_size
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._sink_up = False
        self._next_attempt = 0.0
        self._next_maintenance = 0.0
        self._log_records = settings.log_records
        self._record_log = RecordLog()
        # each record's JSON line, made in the slice that seals it: the log line and the JSONL file's line are the
        # same bytes, and a sink that writes lines then only joins them
        self._want_lines = settings.log_records or bool(getattr(sink, "writes_lines", False))
        # sealed records of a batch whose writer was cancelled mid-way (stop() gave up waiting): delivered first
        self._carry: list[dict[str, Any]] = []
        metrics.queue_depth.set_function(lambda: len(self._queue))
        metrics.queue_age.set_function(self.queue_age)
        metrics.spool_bytes.set_function(self._spool.size_bytes)
        self._written = metrics.written.labels(sink.name if sink is not None else "log")
        self._sink_errors = metrics.sink_errors.labels(sink.name if sink is not None else "log")

    @property
    def writer_id(self) -> str:
        return self._chain.writer_id

    @property
    def sink_up(self) -> bool:
        return self._sink_up

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def queue_age(self) -> float:
        """Seconds since the oldest waiting record's operation finished (the queue is in arrival order)."""
        queue = self._queue
        return max(0.0, time.time() - queue[0].ts_us / 1_000_000) if queue else 0.0

    # ------------------------------------------------------------------ request path (synchronous)

    def observe(self, ctx: RequestContext) -> None:
        """Chain observer hook: capture and enqueue. Never awaits, never blocks."""
        ev = capture(ctx)
        journal = self.journal
        if journal is not None:
            ev.journal = journal.ref(ctx)
        self.enqueue(ev)

    def enqueue(self, event: AuditEvent) -> bool:
        if len(self._queue) >= self._maxsize:
            self._metrics.dropped_queue_full.inc()
            return False
        self._queue.append(event)
        if len(self._queue) >= self._batch:
            self._wakeup.set()
        return True

    def wake(self) -> None:
        """Have the writer send a partial batch now instead of waiting out flush_interval (a measurement's tail)."""
        self._wakeup.set()

    # ------------------------------------------------------------------ writer task

    async def start(self) -> None:
        adopted = await asyncio.to_thread(self._spool.open)
        if adopted:
            log.info("audit spool files from an earlier run will be replayed", files=adopted)
        journal = self.journal
        if journal is not None:
            journal.open()
            # answers of killed processes whose records never became durable: recorded now, by this writer
            for ev in journal.recover(self._spool.owner_alive):
                self.enqueue(ev)
        self._task = asyncio.create_task(background(self._run(), "audit-writer"), name="audit-writer")

    async def stop(self, timeout: float = 30.0) -> None:
        """Flush everything queued (to the sink, or to the spool if the sink is down), then close the sink."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.error("audit writer did not finish in time; spooling the rest", queued=len(self._queue))
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                self._sink_up = False
                await self._drain()
        if self._sink is not None:
            await self._sink.close()
        if self.journal is not None:
            self.journal.close()
        self._spool.close()

    async def _run(self) -> None:
        interval = self._settings.flush_interval
        # a spool left by an earlier run (PostgreSQL was down when it stopped) is replayed first
        await self._try_recover()
        while True:
            if len(self._queue) < self._batch and not self._closing:
                # a partial batch waits (at most flush_interval) for the rest: under steady load, flushing whatever
                # came in during the last fsync made batches of a few records, each paying a thread hop, an open,
                # an fsync and a log write. enqueue() and stop() set the event; no await between clear and wait.
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), interval)
                self._wakeup.clear()
            try:
                if self._closing:
                    await self._drain()
                    if self._sink is not None and self._sink_up and self._spool.pending():
                        await self._try_recover()
                    return
                await self._flush_once()
                if self._sink is not None:
                    await self._try_recover()
                    await self._maybe_maintain()
            except Exception:
                # the writer must outlive any bug: a dead writer would silently fill the queue and drop records
                log.exception("audit writer error")
                await asyncio.sleep(interval)

    async def _drain(self) -> None:
        if self._carry:
            carried, self._carry = self._carry, []
            await self._deliver(carried)
        while self._queue:
            await self._flush_once()

    async def _flush_once(self) -> None:
        n = min(len(self._queue), self._batch)
        if n == 0:
            return
        events = [self._queue.popleft() for _ in range(n)]
        records = await self._seal(events)
        await self._deliver(records)

    async def _seal(self, events: list[AuditEvent]) -> EncodedBatch:
        """Build, sanitize and seal `events` in order (and log them), a slice at a time."""
        out: list[dict[str, Any]] = []
        lines: list[bytes] | None = [] if self._want_lines else None
        slice_ = Slice(SLICE_SECONDS * SEAL_SHARE if self._log_records else None)
        done = 0
        try:
            while True:
                first = len(out)
                done, lines = self._seal_slice(events, done, out, lines, slice_)
                if self._log_records:
                    self._record_log.emit(out[first:], None if lines is None else lines[first:])
                # the batch goes on to the sink in a slice of its own (a last slice sealed and logged in full plus
                # the sink's own first slice held the loop twice as long as one)
                await slice_.next()
                if done >= len(events):
                    return EncodedBatch(out, lines, self._refs(events, done))
        except asyncio.CancelledError:
            # what was not sealed goes back to the head of the queue, what was sealed is delivered first by the
            # drain that follows: the chain keeps every record it numbered
            self._queue.extendleft(reversed(events[done:]))
            self._carry = EncodedBatch(out, lines, self._refs(events, done))
            raise

    def _refs(self, events: list[AuditEvent], upto: int) -> list[int] | None:
        if self.journal is None:
            return None
        # a record that could not be built keeps its reference open: its pre-record is recovered after a restart
        return [ev.journal for ev in events[:upto] if ev.journal is not None]

    def _seal_slice(
        self,
        events: list[AuditEvent],
        start: int,
        out: list[dict[str, Any]],
        lines: list[bytes] | None,
        slice_: Slice,
    ) -> tuple[int, list[bytes] | None]:
        """Seal events from `start` until the slice is spent; (the next event's index, the lines so far)."""
        chain, risk, limits = self._chain, self._risk, self._limits
        dumps = orjson.dumps
        i, n = start, len(events)
        while i < n:
            ev = events[i]
            i += 1
            ts = max(ev.ts_us, chain.last_ts_us)
            try:
                rec = build_record(ev, ts, risk, limits)
            except Exception:
                log.exception("audit record could not be built", request_id=ev.request_id)
                self._metrics.dropped_build.inc()
                continue
            chain.last_ts_us = ts
            out.append(chain.seal(rec))
            if lines is not None:
                try:
                    lines.append(dumps(rec))
                except TypeError:
                    lines = None  # a value orjson cannot take: the log and the sink encode the batch their own way
            if slice_.spent():
                break
        return i, lines

    async def _deliver(self, records: list[dict[str, Any]]) -> None:
        sink = self._sink
        if sink is None:
            self._written.inc(len(records))
            return
        refs = records.refs if isinstance(records, EncodedBatch) else None
        if self._sink_up:
            try:
                await self._write_isolating(records)
            except Exception as exc:
                self._mark_down(exc)
            else:
                self._written.inc(len(records))
                self._ack(refs)
                return
        try:
            if not isinstance(records, EncodedBatch) or records.lines is None:
                records = await self._encoded(records)
            await self._spool.append(records)
        except Exception as exc:
            # the journal keeps these answers' pre-records: a restart records them (notes.recovered)
            self._metrics.dropped_spool.inc(len(records))
            log.error("audit spool write failed; records lost", error=str(exc), records=len(records))
        else:
            self._metrics.spooled.inc(len(records))
            self._ack(refs)

    def _ack(self, refs: list[int] | None) -> None:
        if refs and self.journal is not None:
            self.journal.acked(refs)

    @staticmethod
    async def _encoded(records: list[dict[str, Any]]) -> EncodedBatch:
        """`records` with their JSON lines made a slice at a time (for the spool, when the sink needs no lines)."""
        lines: list[bytes] = []
        slice_ = Slice()
        dumps = orjson.dumps
        for rec in records:
            lines.append(dumps(rec))
            if slice_.spent():
                await slice_.next()
        return EncodedBatch(records, lines)

    async def _write_isolating(self, records: list[dict[str, Any]]) -> None:
        """Write to the sink; if the sink refuses the records themselves (not an outage), split the batch until
        the bad records are isolated and park them in the rejected file, so one bad record never blocks the rest."""
        sink = self._sink
        assert sink is not None
        try:
            await sink.write(records)
        except Exception as exc:
            if not sink.is_data_error(exc):
                raise
            if len(records) > 1:
                mid = len(records) // 2
                await self._write_isolating(records[:mid])
                await self._write_isolating(records[mid:])
                return
            log.error("audit record rejected by the sink", id=records[0].get("id"), error=type(exc).__name__)
            await asyncio.to_thread(append_synced, self._rejected_path, encode_lines(records))
            self._metrics.rejected.inc()

    def _mark_down(self, exc: BaseException) -> None:
        if self._sink_up:
            log.warning(
                "audit sink unavailable; spooling", sink=self._sink.name if self._sink else None, error=str(exc)
            )
        self._sink_up = False
        self._metrics.sink_up.set(0)
        self._sink_errors.inc()
        self._next_attempt = time.monotonic() + self._settings.reconnect_interval

    async def _try_recover(self) -> None:
        """Reconnect a down sink (at most once per reconnect interval) and replay the spool into it."""
        sink = self._sink
        if sink is None or (self._sink_up and not self._spool.pending()):
            return
        if not self._sink_up and time.monotonic() < self._next_attempt and not self._closing:
            return
        try:
            await sink.connect()
            was_down = not self._sink_up
            self._sink_up = True
            self._metrics.sink_up.set(1)
            if was_down:
                log.info("audit sink available", sink=sink.name)
            if self._spool.pending():
                await self._spool.replay(self._write_isolating, self._batch, self._metrics.replayed.inc)
        except Exception as exc:
            self._mark_down(exc)

    async def _maybe_maintain(self) -> None:
        if self._sink is None or not self._sink_up or time.monotonic() < self._next_maintenance:
            return
        self._next_maintenance = time.monotonic() + self._settings.retention_interval_seconds
        # spools of processes that ended while this one runs (another worker crashed with PostgreSQL down)
        await asyncio.to_thread(self._spool.adopt_orphans)
        try:
            dropped = await self._sink.maintain()
        except Exception as exc:
            self._mark_down(exc)
            return
        if dropped:
            self._metrics.partitions_dropped.inc(dropped)
            log.info("audit retention dropped partitions", count=dropped)
