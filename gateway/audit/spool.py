"""AuditSpool: the local append-only file that holds sealed records while the sink is unavailable.

Every batch is fsynced before the writer moves on, so a record that reached the spool survives a crash. Replay
first renames the spool aside (`<spool>.replay-<n>`), so records spooled during a replay (the sink failed again)
land in a fresh file and nothing is read and appended at once. A replay file is deleted only after every record in
it was accepted by the sink; an interrupted replay starts that file again from the top, which is safe because sink
writes are idempotent per record id. Only the pipeline's single writer task touches the spool.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from gateway.audit.files import append_synced, encode_lines, read_chunk

log = structlog.get_logger("gateway.audit")

Writer = Callable[[list[dict[str, Any]]], Awaitable[None]]


class AuditSpool:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _replay_files(self) -> list[Path]:
        return sorted(self.path.parent.glob(f"{self.path.name}.replay-*"))

    def pending(self) -> bool:
        try:
            if self.path.stat().st_size > 0:
                return True
        except FileNotFoundError:
            pass
        return bool(self._replay_files())

    def size_bytes(self) -> int:
        total = 0
        for p in [self.path, *self._replay_files()]:
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                continue
        return total

    async def append(self, records: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(append_synced, self.path, encode_lines(records))

    def _rotate(self) -> None:
        try:
            if self.path.stat().st_size == 0:
                return
        except FileNotFoundError:
            return
        os.replace(self.path, self.path.with_name(f"{self.path.name}.replay-{time.time_ns()}"))

    async def replay(self, write: Writer, batch_size: int, on_batch: Callable[[int], None] | None = None) -> int:
        """Send every spooled record to `write`, oldest file first; returns how many were sent.

        Raises whatever `write` raises; the file being replayed stays for the next attempt.
        """
        await asyncio.to_thread(self._rotate)
        sent = 0
        for path in self._replay_files():
            offset = 0
            while True:
                records, offset, bad = await asyncio.to_thread(read_chunk, path, offset, batch_size)
                if bad:
                    log.error("audit spool: unreadable lines skipped", file=str(path), lines=bad)
                if not records:
                    break
                await write(records)
                sent += len(records)
                if on_batch is not None:
                    on_batch(len(records))
            await asyncio.to_thread(path.unlink, missing_ok=True)
            log.info("audit spool replayed", file=path.name, records=sent)
        return sent
