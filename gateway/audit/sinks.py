"""Audit sinks: where sealed records end up. The pipeline calls them from its single writer task."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Protocol

from gateway.audit.files import append_records


class AuditSink(Protocol):
    """A store of sealed records. `write` must be idempotent per record id (replays resend records)."""

    name: str

    async def connect(self) -> None: ...

    async def write(self, records: list[dict[str, Any]]) -> None: ...

    async def maintain(self) -> int:
        """Periodic housekeeping (partitions, retention); returns how many partitions it dropped."""
        ...

    def is_data_error(self, exc: BaseException) -> bool:
        """True when `write` failed because of the records themselves, not because the store is unavailable."""
        ...

    async def close(self) -> None: ...


class JsonlFileSink:
    """The embedded default: one JSON record per line, appended and fsynced per batch."""

    name = "file"
    # the writer makes each record's line while it seals it (in time slices), so write() only joins them
    writes_lines = True

    def __init__(self, path: Path) -> None:
        self.path = path

    async def connect(self) -> None:
        await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)

    async def write(self, records: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(append_records, self.path, records)

    async def maintain(self) -> int:
        return 0

    def is_data_error(self, exc: BaseException) -> bool:
        return isinstance(exc, TypeError | ValueError)  # unserializable record; disk errors are OSError

    async def close(self) -> None:
        return None
