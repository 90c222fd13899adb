"""W3C Trace Context (`traceparent`, `tracestate`) read from a client's request and written on the upstream's.

The headers are the client's: anything may be in them. Each is checked against the W3C grammar after a length
check (nothing longer than `TRACEPARENT_MAX` / `TRACESTATE_MAX` is looked at further), and whatever fails is
ignored as if it were absent: the request starts a new trace. Nothing here raises, logs or keeps a client value
that failed a check, and a failed value never crosses the gateway (the upstream gets the gateway's own
`traceparent`, and `tracestate` only when it was valid and belonged to a valid `traceparent`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from multidict import CIMultiDict
from opentelemetry.trace import SpanContext, TraceFlags, TraceState

# version 00 is exactly 55 characters; a later version may append fields, within reason
TRACEPARENT_MAX = 256
# W3C: a vendor must propagate at least 512 characters; beyond, it may drop the whole header, which we do
TRACESTATE_MAX = 512
TRACESTATE_MEMBERS_MAX = 32

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_KEY = re.compile(r"[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13}")
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


def parse_traceparent(value: object) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a valid `traceparent`, else None."""
    if type(value) is not str or len(value) > TRACEPARENT_MAX or len(value) < 55:
        return None
    m = _TRACEPARENT.match(value)
    if m is None:
        return None
    version = m.group(1)
    if version == "ff":
        return None
    # version 00 has exactly four fields; a later version may add fields after a dash
    if len(value) > 55 and (version == "00" or value[55] != "-"):
        return None
    trace_id = int(m.group(2), 16)
    span_id = int(m.group(3), 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, int(m.group(4), 16)


def parse_tracestate(values: Iterable[object]) -> TraceState | None:
    """The members of the `tracestate` header(s) (several headers are one list, in order), or None when absent,
    too long or invalid anywhere: the whole header is then dropped, never passed on in part."""
    parts: list[str] = []
    size = 0
    for value in values:
        if type(value) is not str:
            return None
        size += len(value) + 1
        if size > TRACESTATE_MAX + 1:
            return None
        parts.append(value)
    if not parts:
        return None
    members: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw in ",".join(parts).split(","):
        item = raw.strip(" \t")
        if not item:
            continue  # empty list members are allowed (OWS between commas)
        key, sep, val = item.partition("=")
        if not sep or key in seen or _KEY.fullmatch(key) is None or _VALUE.fullmatch(val) is None:
            return None
        seen.add(key)
        members.append((key, val))
        if len(members) > TRACESTATE_MEMBERS_MAX:
            return None
    return TraceState(members) if members else None


def extract(headers: object) -> SpanContext | None:
    """The client's span context, or None when it sent no valid one (several `traceparent` headers are invalid)."""
    getall = getattr(headers, "getall", None)
    if getall is None:
        return None
    parents = getall("traceparent", ())
    if len(parents) != 1:
        return None
    parsed = parse_traceparent(parents[0])
    if parsed is None:
        return None
    trace_id, span_id, flags = parsed
    state = parse_tracestate(getall("tracestate", ()))
    return SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        # only the sampled bit is defined (level 1); the others are not passed on
        trace_flags=TraceFlags(flags & TraceFlags.SAMPLED),
        trace_state=state,
    )


def traceparent(ctx: SpanContext) -> str:
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags & TraceFlags.SAMPLED:02x}"


def inject(headers: CIMultiDict[str], ctx: SpanContext) -> None:
    """Replace whatever trace context `headers` carries (the client's, valid or not) with `ctx`."""
    headers["traceparent"] = traceparent(ctx)
    state = ctx.trace_state
    if state:
        headers["tracestate"] = state.to_header()
    elif "tracestate" in headers:
        headers.popall("tracestate")
