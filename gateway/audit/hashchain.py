"""Tamper evidence: every record is chained to the previous record of the same writer.

    hash = sha256(prev_hash || "\\n" || canonical JSON of the record without `hash`)

A writer is one gateway process (`writer_id` = host:pid:random); `seq` counts its records from 1 and the first
record's `prev_hash` is GENESIS. Editing a record breaks its hash, removing one leaves a gap in `seq` (and a
broken link), reordering breaks the `seq` order (and the links). Retention removes a prefix of a chain: the hash of
the last removed record is kept as the chain's anchor, so the first remaining record still verifies.

`verify_records` is the pure logic shared by `mcp-gateway audit verify --file` and `--dsn`.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

GENESIS = "0" * 64


def canonical(record: dict[str, Any]) -> bytes:
    if "hash" in record:
        # a C-level copy and one delete cost a fraction of a per-key comprehension over ~36 keys
        body = dict(record)
        del body["hash"]
    else:
        body = record  # the writer hashes before adding `hash`: nothing to leave out, no copy needed
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev: str, body: bytes) -> str:
    """The one formula: sha256(prev_hash || "\\n" || canonical body). The writer seals and `verify` checks with it."""
    digest = hashlib.sha256(prev.encode() + b"\n")
    digest.update(body)  # not `prev + body`: that copies the ~1 KB body once more
    return digest.hexdigest()


def record_hash(record: dict[str, Any]) -> str:
    return chain_hash(str(record.get("prev_hash") or ""), canonical(record))


def new_writer_id() -> str:
    return f"{socket.gethostname()[:48]}:{os.getpid()}:{secrets.token_hex(4)}"


class HashChain:
    """The chain state of one writer. Used only by the single writer task, so no locking."""

    def __init__(self, writer_id: str | None = None) -> None:
        self.writer_id = writer_id or new_writer_id()
        self.seq = 0
        self.prev = GENESIS
        # record time is kept monotonic per writer so that dropping a day partition removes a chain prefix
        self.last_ts_us = 0

    def seal(self, record: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        record["writer_id"] = self.writer_id
        record["seq"] = self.seq
        record["prev_hash"] = prev = self.prev
        # `hash` is not set yet, so canonical() dumps the record itself, without a copy
        record["hash"] = h = chain_hash(prev, canonical(record))
        self.prev = h
        return record


@dataclass(frozen=True, slots=True)
class Anchor:
    """What the store knows about a writer's chain besides its rows (PostgreSQL `audit_chain_heads`)."""

    anchor_seq: int = 0
    anchor_hash: str = GENESIS
    last_seq: int | None = None
    last_hash: str | None = None


@dataclass(slots=True)
class VerifyReport:
    records: int = 0
    writers: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, msg: str, limit: int = 1000) -> None:
        if len(self.problems) < limit:
            self.problems.append(msg)
        elif len(self.problems) == limit:
            self.problems.append("... (more problems not shown)")


@dataclass(slots=True)
class _WriterState:
    expect_seq: int
    prev: str
    seen: int = 0


class ChainVerifier:
    """Checks chains record by record (constant memory per writer), for files and tables of any size.

    Records must come in storage order (file order, or `writer_id, seq`). Without heads (a JSONL file) every chain
    must start at seq 1 from GENESIS. With heads (PostgreSQL, `require_heads`), a chain starts right after its
    anchor and must end at the recorded head, so a removed tail, or a writer whose every row was removed, is
    caught too.
    """

    def __init__(
        self, anchors: dict[str, Anchor] | None = None, *, where: str = "record", require_heads: bool = False
    ) -> None:
        self.report = VerifyReport()
        self._anchors = anchors or {}
        self._where = where
        self._require_heads = require_heads
        self._state: dict[str, _WriterState] = {}

    def add(self, rec: dict[str, Any]) -> None:
        report = self.report
        report.records += 1
        writer = str(rec.get("writer_id"))
        seq = rec.get("seq")
        label = f"{self._where} {report.records} (writer {writer}, seq {seq}, id {rec.get('id')})"
        if not isinstance(seq, int):
            report.add(f"{label}: missing chain fields")
            return
        st = self._state.get(writer)
        if st is None:
            a = self._anchors.get(writer, Anchor())
            st = self._state[writer] = _WriterState(a.anchor_seq + 1, a.anchor_hash)
        if seq != st.expect_seq:
            if seq < st.expect_seq:
                report.add(f"{label}: out of order or duplicated (expected seq {st.expect_seq})")
            else:
                report.add(f"{label}: {seq - st.expect_seq} record(s) missing before it (seq {st.expect_seq}..)")
        if rec.get("prev_hash") != st.prev:
            report.add(f"{label}: prev_hash does not match the previous record's hash")
        if record_hash(rec) != rec.get("hash"):
            report.add(f"{label}: content altered (hash mismatch)")
        st.expect_seq = seq + 1
        # continue from the stored hash so one altered record is reported once, not for the rest of the chain
        st.prev = str(rec.get("hash"))
        st.seen += 1

    def finish(self) -> VerifyReport:
        report = self.report
        for writer, a in self._anchors.items():
            st = self._state.get(writer)
            if a.last_seq is None or a.last_seq <= a.anchor_seq:
                continue
            if st is None:
                report.add(
                    f"writer {writer}: all {a.last_seq - a.anchor_seq} record(s) after seq {a.anchor_seq} missing"
                )
            elif st.expect_seq - 1 < a.last_seq:
                report.add(f"writer {writer}: records {st.expect_seq}..{a.last_seq} missing at the end of the chain")
            elif st.expect_seq - 1 == a.last_seq and st.prev != a.last_hash:
                report.add(f"writer {writer}: last record does not match the recorded chain head")
        if self._require_heads or self._anchors:
            for writer in self._state:
                if writer not in self._anchors:
                    report.add(f"writer {writer}: has records but no chain head (head row removed?)")
        report.writers = len(self._state)
        return report


def verify_records(
    records: Iterable[dict[str, Any]],
    anchors: dict[str, Anchor] | None = None,
    *,
    where: str = "record",
    require_heads: bool = False,
) -> VerifyReport:
    """Check the chains in `records` (see ChainVerifier)."""
    verifier = ChainVerifier(anchors, where=where, require_heads=require_heads)
    for rec in records:
        verifier.add(rec)
    return verifier.finish()


def iter_jsonl(path: str) -> Iterator[dict[str, Any]]:
    """Records of a JSONL audit file; an unreadable line is yielded as an empty dict (reported as broken)."""
    with open(path, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                yield {}
                continue
            yield obj if isinstance(obj, dict) else {}
