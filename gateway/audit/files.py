"""Append-only JSONL files: the embedded sink and the spool both use these (always from a worker thread)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson


class EncodedBatch(list[dict[str, Any]]):
    """Sealed records of one batch with their JSON lines (`orjson.dumps` of each), when the writer already made
    them for the structured log: the file sink and the spool then write those instead of dumping every record
    again. A slice (the split of a refused batch) is a plain list and is encoded afresh."""

    __slots__ = ("lines", "refs")

    def __init__(
        self, records: list[dict[str, Any]], lines: list[bytes] | None = None, refs: list[int] | None = None
    ) -> None:
        super().__init__(records)
        self.lines = lines if lines is not None and len(lines) == len(records) else None
        # the journal references of these records (gateway/audit/journal.py), acknowledged once they are durable
        self.refs = refs


def encode_lines(records: list[dict[str, Any]]) -> bytes:
    lines = records.lines if isinstance(records, EncodedBatch) else None
    if lines is None or len(lines) != len(records):
        lines = [orjson.dumps(r) for r in records]
    if not lines:
        return b""
    # one join with the final newline in it: a second ~0.5 MB buffer for `+ b"\n"` costs more than the join
    return b"\n".join([*lines, b""])


def append_synced(path: Path, data: bytes) -> int:
    """Append `data` and fsync before returning; the new size of the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def read_chunk(path: Path, offset: int, max_lines: int) -> tuple[list[dict[str, Any]], int, int]:
    """Up to `max_lines` records from `offset`: (records, next offset, unreadable lines skipped).

    A torn last line (the process died mid-write) is skipped, not fatal: every complete line before it counts.
    """
    records: list[dict[str, Any]] = []
    bad = 0
    with path.open("rb") as fh:
        fh.seek(offset)
        while len(records) < max_lines:
            line = fh.readline()
            if not line:
                break
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                bad += 1
                continue
            if isinstance(obj, dict):
                records.append(obj)
            else:
                bad += 1
        return records, fh.tell(), bad


def append_records(path: Path, records: list[dict[str, Any]]) -> int:
    """`append_synced` of the records' JSON lines; for a thread: the join of a batch's lines (~0.5 MB) is done there
    too, not on the event loop."""
    return append_synced(path, encode_lines(records))
