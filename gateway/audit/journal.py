"""AuditJournal: the write-ahead intent journal that keeps answered calls in the audit trail across a SIGKILL.

The full record of a request is queued in memory when the request ends and reaches the sink up to
`flush_interval` later (gateway/audit/pipeline.py). A process killed in between lost those records although their
answers had gone out (issue 15, item 4: 437 answered calls). So before the first byte of any answer leaves, a compact
pre-record of it (the facts known at that moment: who, which server and method, the decision and the status) is in
the kernel: appended to this process's journal file by a plain `os.write` (no fsync: it survives the process, not
the host).

    answer prepared (on_response_prepare, both HTTP servers)   note(ctx, status): one line into the pending batch
                                                                flush(): one os.write of the pending lines
    record durable (sink accepted it, or the spool fsynced it)  acked(refs): one "done" line, entries forgotten
    segment past ROTATE_BYTES                                   rotate: a new file starts with the lines still open,
                                                                the old one is deleted
    start-up                                                    recover(): journals of dead processes, minus their
                                                                done lines, become records (notes.recovered)

Every record the pipeline makes carries a reference (`ctx.audit_ref`), taken by whichever comes first: the answer
(forwarded calls: the answer is written before the chain's `finally` records it) or the capture (refusals are
recorded before they are rendered). A pre-record whose record was already acknowledged is not written at all.

Ownership follows the spool: the journal's files carry the spool's token (`<dir>/<token>.<n>.journal`) and the
owner is alive while it holds the spool's lock. A dead owner's files are claimed by an atomic rename, so two
processes starting together never recover the same file; the claimer copies the open lines into its own journal
before deleting the claimed files, so a crash during recovery loses nothing either.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from gateway.audit.record import AuditEvent, capture
from gateway.audit.sanitize import redact_identifier, redact_text
from gateway.redact import display_url

if TYPE_CHECKING:
    from gateway.context import RequestContext

log = structlog.get_logger("gateway.audit")

# a segment is replaced by a fresh one (holding only the lines still open) past this size
ROTATE_BYTES = 4 * 1024 * 1024
RECOVERED_NOTE = "journal"

# AuditEvent fields kept in a pre-record, after its reference (the session id is not: it is a bearer secret)
_FIELDS: tuple[str, ...] = (
    "ts_us",
    "started_us",
    "request_id",
    "server",
    "transport",
    "http_method",
    "client_ip",
    "tenant",
    "principal",
    "key_id",
    "auth_method",
    "upstream",
    "rpc_method",
    "rpc_id",
    "tool",
    "resource_uri",
    "refused_stage",
    "refused_reason",
    "http_status",
    "rpc_error_code",
    "upstream_status",
    "bytes_in",
)


# the client's free text and the upstream URL: redacted as the record will be before they are written to disk (a
# pre-record sits in the journal until its record is durable, and after a crash until the next start)
_SECRET_FIELDS = frozenset({"request_id", "rpc_method", "rpc_id", "tool", "resource_uri", "upstream"})


def _disk_values(ev: AuditEvent) -> list[Any]:
    out: list[Any] = []
    for f in _FIELDS:
        value = getattr(ev, f)
        if f in _SECRET_FIELDS and isinstance(value, str):
            if f == "upstream":
                value = display_url(value)
            elif f == "resource_uri":
                value = redact_text(value, remember=False)
            else:
                value = redact_identifier(value)
        out.append(value)
    return out


def journal_dir(spool_path: Path) -> Path:
    # beside the spool, outside its name space (`<spool>.<token>...`): the spool never adopts a journal file
    return spool_path.with_name(f"{spool_path.name}-journal")


def _encode(ref: int, values: list[Any]) -> bytes:
    return orjson.dumps([ref, *values]) + b"\n"


class AuditJournal:
    def __init__(self, directory: Path, token: str) -> None:
        self.dir = directory
        self.token = token
        self._fd: int | None = None
        self._path: Path | None = None
        self._segment = 0
        self._size = 0
        self._next = 1
        # references not yet acknowledged -> their pre-record line (None while no answer was prepared)
        self._open: dict[int, bytes | None] = {}
        self._pending: list[bytes] = []
        self.broken = False

    # ------------------------------------------------------------------ files

    def _segment_path(self, n: int) -> Path:
        return self.dir / f"{self.token}.{n}.journal"

    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._start_segment(b"")

    def _start_segment(self, first: bytes) -> None:
        self._segment += 1
        path = self._segment_path(self._segment)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
        if first:
            _write_all(fd, first)
        old, old_path = self._fd, self._path
        self._fd, self._path, self._size = fd, path, len(first)
        self._carried = len(first)
        if old is not None:
            os.close(old)
        if old_path is not None:
            # the new segment holds every line still open: the old one has nothing left to recover
            with contextlib.suppress(FileNotFoundError):
                old_path.unlink()

    def close(self) -> None:
        """Flush; delete the segment when every record was acknowledged (else the next process recovers it)."""
        self.flush()
        fd, self._fd = self._fd, None
        if fd is None:
            return
        os.close(fd)
        if self._path is not None and not any(line is not None for line in self._open.values()):
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()

    # ------------------------------------------------------------------ request path (synchronous, no await)

    def ref(self, ctx: RequestContext) -> int:
        """The request's reference, taken now if it has none."""
        n = ctx.audit_ref
        if n is None:
            n = ctx.audit_ref = self._next
            self._next = n + 1
            self._open[n] = None
        return n

    def note(self, ctx: RequestContext, status: int) -> None:
        """The pre-record of an answer about to be written (written out by the next `flush`)."""
        if self.broken:
            return
        n = ctx.audit_ref
        if n is None:
            n = self.ref(ctx)
        elif self._open.get(n, b"") is not None:
            return  # noted already, or its record is durable: nothing to do ahead of this answer
        ev = capture(ctx)
        if ev.http_status is None:
            ev.http_status = status
        line = _encode(n, _disk_values(ev))
        self._open[n] = line
        self._pending.append(line)

    def flush(self) -> None:
        """Write the pending pre-records: one system call, before the first byte of an answer goes out."""
        pending = self._pending
        if not pending or self._fd is None:
            return
        data = b"".join(pending) if len(pending) > 1 else pending[0]
        pending.clear()
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            self._fail(exc)
            return
        self._size += len(data)

    def _fail(self, exc: OSError) -> None:
        # answers are never held back by the journal: without it the old window (the in-memory queue) applies
        if not self.broken:
            log.error("audit journal write failed; answers are no longer journaled", error=str(exc))
        self.broken = True
        self._pending.clear()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    # ------------------------------------------------------------------ writer side

    def acked(self, refs: list[int]) -> None:
        """These references' records are durable (in the sink, the spool, or the rejected file)."""
        done: list[int] = []
        pop = self._open.pop
        for n in refs:
            if pop(n, None) is not None:
                done.append(n)
        if not done or self._fd is None:
            return
        self.flush()
        data = orjson.dumps({"done": done}) + b"\n"
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            self._fail(exc)
            return
        self._size += len(data)
        # rotate once the segment grew by ROTATE_BYTES past what it started with: with more open lines than that
        # (records dropped or never built stay open) every acknowledgement rewrote them all on the loop
        if self._size - self._carried > ROTATE_BYTES:
            self._rotate()

    def _rotate(self) -> None:
        self._pending.clear()  # every pending line is open: the new segment starts with it
        try:
            self._start_segment(b"".join(line for line in self._open.values() if line is not None))
        except OSError as exc:
            self._fail(exc)

    # ------------------------------------------------------------------ recovery

    def recover(self, owner_alive: Any) -> list[AuditEvent]:
        """Claim the journals of dead owners and return the events of their answers that have no durable record,
        each already journaled as this process's own (so it is acknowledged like any other record)."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        claimed: list[tuple[str, Path]] = []
        alive: dict[str, bool] = {}
        for name in names:
            token, _, rest = name.partition(".")
            if not rest.endswith("journal") or token == self.token:
                continue
            if token not in alive:
                alive[token] = bool(owner_alive(token))
            if alive[token]:
                continue
            dest = self.dir / f"{self.token}.claimed-{token}-{rest}"
            try:
                os.replace(self.dir / name, dest)
            except FileNotFoundError:
                continue  # another process claimed it first
            claimed.append((token, dest))
        # keyed by (owner, reference): a rotation killed half-way leaves a line in two segments of one owner
        lines: dict[tuple[str, int], list[Any]] = {}
        done: set[tuple[str, int]] = set()
        for origin, path in claimed:
            for pre, finished in _read(path):
                if pre is not None:
                    lines[(origin, pre[0])] = pre
                for n in finished:
                    done.add((origin, n))
        events: list[AuditEvent] = []
        for key, pre in lines.items():
            if key in done:
                continue
            ev = _event(pre)
            if ev is None:
                continue
            n = self._next
            self._next = n + 1
            ev.journal = n
            line = _encode(n, [getattr(ev, f) for f in _FIELDS])
            self._open[n] = line
            self._pending.append(line)
            events.append(ev)
        self.flush()
        for _, path in claimed:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if claimed:
            log.info("audit journal recovered", files=len(claimed), records=len(events))
        return events


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read(path: Path) -> list[tuple[list[Any] | None, list[int]]]:
    out: list[tuple[list[Any] | None, list[int]]] = []
    with path.open("rb") as fh:
        for raw in fh:
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # a torn last line (killed mid-write): that answer's bytes never left either
            if isinstance(obj, list) and len(obj) == len(_FIELDS) + 1 and isinstance(obj[0], int):
                out.append((obj, []))
            elif isinstance(obj, dict) and isinstance(obj.get("done"), list):
                out.append((None, [n for n in obj["done"] if isinstance(n, int)]))
    return out


def _event(pre: list[Any]) -> AuditEvent | None:
    values = dict(zip(_FIELDS, pre[1:], strict=True))
    try:
        ev = AuditEvent(
            ts_us=int(values["ts_us"]),
            started_us=int(values["started_us"]),
            request_id=str(values["request_id"]),
            server=str(values["server"]),
            transport=str(values["transport"]),
            http_method=str(values["http_method"]),
            client_ip=str(values["client_ip"]),
        )
    except (TypeError, ValueError):
        return None
    for name in _FIELDS[7:]:
        setattr(ev, name, values[name])
    ev.notes = {"recovered": RECOVERED_NOTE}
    return ev
