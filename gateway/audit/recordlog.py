"""The structured log line of every audit record (issue 7: "structured JSON log always"), written per batch.

Through structlog, one record costs a bound-logger call, a context copy, four processors, a timestamp, one JSON
dump and a print with a flush: ~8 us, the largest share of the writer's work. With the processors that
`gateway.logging` configures (context variables, level, timestamp, exception formatting, JSON through orjson),
the line of a record is exactly the record's JSON followed by keys that do not depend on the record:

    {<record fields>, "event": "audit", <bound context variables>, "level": "info", "timestamp": "..."}

So those trailing keys are computed once per batch by running the configured processors themselves on a
placeholder of the record, spliced onto each record's orjson dump, and the batch is written with one print.
Every other configuration (console format, a test capturing logs, any extra processor) takes structlog's own
path, record by record, as before. The only difference on the fast path: the records of one slice of a batch (the
writer emits a batch a time slice at a time, gateway/pacing.py) share the timestamp of the moment they are written
out together.
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import sys
from itertools import islice
from typing import Any

import orjson
import structlog
from structlog import _output as structlog_output
from structlog.processors import JSONRenderer, TimeStamper

from gateway import logging as gateway_logging

# processors whose output does not depend on the record's values (only on its keys, the clock and the context)
_RECORD_INDEPENDENT = (
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.format_exc_info,
)


def _raw_stream(printer: Any) -> io.TextIOWrapper | None:
    """The process's own stdout/stderr text stream the printer prints to, when writing the UTF-8 bytes of a batch
    straight to its binary buffer puts exactly the bytes print() would put there.

    Why: print() of a batch needs the batch as str (a decode) and encodes it again, and those ~0.5 MB copies, made
    next to each other, cost ~1 us a record (fresh pages from the allocator each batch); one bytes join does not.
    Only the interpreter's own std streams qualify: their newline handling is known (none on POSIX), and orjson's
    output is valid UTF-8, which a UTF-8 stream encodes back unchanged under any error handler."""
    file = getattr(printer, "_file", None)
    if file is vars(structlog_output)["stdout"]:
        file = sys.stdout  # PrintLogger prints to whatever sys.stdout is at the time
    if (
        os.linesep != "\n"
        or (file is not sys.__stderr__ and file is not sys.__stdout__)
        or type(file) is not io.TextIOWrapper
        or getattr(printer, "_lock", None) is None
    ):
        return None
    try:
        # a FileIO buffer when Python runs unbuffered (-u, PYTHONUNBUFFERED), as gateways in containers often do
        if codecs.lookup(file.encoding).name != "utf-8" or type(file.buffer) not in (io.BufferedWriter, io.FileIO):
            return None
    except (LookupError, AttributeError, ValueError):
        return None
    return file


def _write_raw(printer: Any, stream: io.TextIOWrapper, data: bytes) -> None:
    with printer._lock:  # the lock PrintLogger.msg takes for this file
        stream.flush()  # text written before must come out first
        out: io.BufferedWriter | io.FileIO = stream.buffer  # type: ignore[assignment]  # checked by _raw_stream
        view = memoryview(data)
        while view:
            n = out.write(view)  # a FileIO may take less than all of it
            if n is None:
                raise BlockingIOError("audit log stream would block")  # what a BufferedWriter raises
            view = view[n:]
        out.flush()


class RecordLog:
    def __init__(self, logger_name: str = "gateway.audit", event: str = "audit") -> None:
        self._log = structlog.get_logger(logger_name)
        self._event = event

    def emit(self, records: list[dict[str, Any]], lines: list[bytes] | None = None) -> list[bytes] | None:
        """Log each record as its own JSON line (event `audit`), in order.

        `lines`, when given, are `orjson.dumps(record)` of each record, made by the caller (the audit writer dumps
        each record as it seals it, so its time slices include that work). Returns those dumps when the fast path
        used or made them, for the JSONL sink."""
        if not records:
            return None
        fast = self._batch_renderer(records)
        if fast is not None:
            printer, suffix = fast
            if printer is None:
                return None  # info is filtered out by the configured level: structlog would print nothing either
            if lines is None or len(lines) != len(records):
                try:
                    lines = [orjson.dumps(rec) for rec in records]
                except TypeError:
                    lines = None  # a value orjson cannot take: structlog's serializer stringifies it (default=str)
            if lines is not None:
                # `{record}` minus its closing brace, then `,"event":...}`: the JSON of the merged dict, key for key
                heads = [line[:-1] for line in lines]
                sep = suffix + b"\n"
                raw = _raw_stream(printer)
                if raw is None:
                    printer.msg(sep.join(heads).decode() + suffix.decode())
                else:
                    heads.append(b"")  # the batch in one buffer, final newline included
                    _write_raw(printer, raw, sep.join(heads))
                return lines
        for rec in records:
            self._log.info(self._event, **rec)
        return None

    def _batch_renderer(self, records: list[dict[str, Any]]) -> tuple[Any, bytes] | None:
        """(PrintLogger or None when info is filtered, `,<trailing keys>}`), or None when the fast path would not
        print exactly what structlog prints."""
        bound = self._log.bind()
        is_enabled_for = getattr(bound, "is_enabled_for", None)
        if not isinstance(bound, structlog.BoundLoggerBase) or is_enabled_for is None or bound._context:
            return None
        printer = bound._logger
        procs = list(bound._processors)
        if type(printer) is not structlog.PrintLogger or not procs:
            return None
        renderer = procs.pop()
        if not isinstance(renderer, JSONRenderer) or getattr(renderer, "_dumps", None) is not gateway_logging._dumps:
            return None
        if not all(p in _RECORD_INDEPENDENT or type(p) is TimeStamper for p in procs):
            return None
        if not is_enabled_for(logging.INFO):
            return (None, b"")
        first = records[0]
        n = len(first)
        # what structlog builds for a record: its fields, then the event, then whatever the processors add
        probe: Any = dict.fromkeys(first)
        probe["event"] = self._event
        for proc in procs:
            probe = proc(printer, "info", probe)
        if list(islice(probe, n)) != list(first) or any(v is not None for v in islice(probe.values(), n)):
            return None  # a processor touched a record field: its value would matter
        trailing = dict(islice(probe.items(), n, None))
        # every record of a batch comes from build_record + seal, so all share the first one's keys; a record
        # that would shadow a trailing key (or lack one) is left to structlog
        for rec in records:
            if len(rec) != n or not rec.keys().isdisjoint(trailing):
                return None
        rendered = renderer(printer, "info", trailing)
        if not isinstance(rendered, str) or not rendered.startswith("{"):
            return None
        return printer, b"," + rendered[1:].encode()
