"""One request's spans: the server span, a child per chain stage, a client span per upstream attempt.

    <client span>                                   (the caller's `traceparent`, when it sent a valid one)
      tools/call add            SERVER  arrival -> end of the answer (stream included)
        gateway authn           INTERNAL
        gateway authz           INTERNAL
        gateway ratelimit       INTERNAL
        gateway breaker         INTERNAL
        POST                    CLIENT  one per upstream attempt: a retry is a second one (http.request.resend_count)
          <upstream's spans>            (the upstream gets this span as parent in `traceparent`)

Only a request the sampler keeps gets child spans and attributes; an unsampled one costs one non-recording span
(its id still goes upstream, flagged unsampled, so the upstream's own sampler follows the decision). Attributes
follow the OpenTelemetry semantic conventions for HTTP and for MCP (gen-ai/mcp.md), plus the gateway's own under
`mcp_gateway.*`. Never recorded: arguments, results, credentials, the session id itself (a SHA-256 prefix, the
audit record's `session_hash`), resource URIs. Every client-chosen string is bounded (gateway/bounds.py) and the
ones that may carry a pasted credential go through the audit's identifier redaction first.
"""

from __future__ import annotations

import functools
import hashlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    set_span_in_context,
)

from gateway import bounds
from gateway.audit.sanitize import clean_text, redact_identifier
from gateway.errors import GatewayError
from gateway.redact import display_url
from gateway.tracing.propagation import extract, inject

if TYPE_CHECKING:
    from multidict import CIMultiDict

    from gateway.chain import Filter
    from gateway.context import RequestContext, UpstreamOutcome

# the stages that get a span of their own: each may wait on something (a key store, JWKS, Redis, a shared breaker).
# client_guard is a dict lookup; a refusal there shows on the server span (mcp_gateway.refused.stage)
TRACED_STAGES = frozenset({"authn", "authz", "ratelimit", "breaker"})
_STAGE_NAMES = {stage: f"gateway {stage}" for stage in TRACED_STAGES}
_STAGE_ATTRS = {stage: {"mcp_gateway.stage": stage} for stage in TRACED_STAGES}
_AUTHORIZED_AFTER = frozenset({"ratelimit", "breaker", "session", "forward"})
HOST_MAX = 255
PATH_MAX = 256
VERSION_MAX = 32


def session_hash(session_id: str) -> str:
    """The audit record's `session_hash` of this session id (gateway/audit/record.py), so a span and its record join."""
    return hashlib.sha256(bounds.bound_key(session_id).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _text(text: str, limit: int) -> str:
    """A client's string as an attribute: bounded, and valid UTF-8 (a header's undecodable bytes arrive as surrogate
    escapes, which protobuf cannot encode: one such span would fail its whole export batch)."""
    # the room is for bound()'s marker, which clean_text then leaves as it is
    return clean_text(bounds.bound(text, limit), limit + 64)


def _identifier(text: str, limit: int) -> str:
    return _text(redact_identifier(bounds.bound(text, limit)), limit)


@functools.lru_cache(maxsize=256)
def _upstream_attributes(url: str) -> dict[str, Any]:
    """HTTP client attributes of an upstream URL (from policy, or an upstream's legacy `endpoint` event)."""
    attrs: dict[str, Any] = {"url.full": _text(display_url(url), 1024)}
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return attrs
    if parts.hostname:
        attrs["server.address"] = _text(parts.hostname, HOST_MAX)
        attrs["server.port"] = port or (443 if parts.scheme in ("https", "wss") else 80)
    return attrs


def _upstream_attrs(url: str) -> dict[str, Any]:
    # remembered only for URLs of ordinary length (a legacy upstream names its own POST URL)
    return _upstream_attributes(url) if len(url) <= 1024 else _upstream_attributes.__wrapped__(url)


def _host_attributes(host: object, attrs: dict[str, Any]) -> None:
    if type(host) is not str or not host or len(host) > HOST_MAX:
        return
    try:
        parts = urlsplit("//" + host)
        port = parts.port
    except ValueError:
        return
    if parts.hostname:
        attrs["server.address"] = _text(parts.hostname, HOST_MAX)
        if port is not None:
            attrs["server.port"] = port


class Attempt:
    """One upstream attempt's CLIENT span: its outcome comes through the request's outcome hooks (the same report
    the breaker learns from); it ends when the attempt fails, is discarded for a retry, or the request ends."""

    __slots__ = ("ended", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.ended = False

    def outcome(self, o: UpstreamOutcome) -> None:
        span = self.span
        if o.status is not None:
            span.set_attribute("http.response.status_code", o.status)
            if o.status >= 400:
                span.set_attribute("error.type", str(o.status))
                span.set_status(Status(StatusCode.ERROR))
        if o.error is not None:
            span.set_attribute("error.type", o.error)
            span.set_status(Status(StatusCode.ERROR, o.error))
            self.end()  # nothing more will come of this attempt

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.span.end()


class RequestTrace:
    """The trace of one request (or one WebSocket message): `ctx.trace`, None whenever tracing is off."""

    __slots__ = ("_context", "_tracer", "attempts", "recording", "server_span", "span_id", "trace_id")

    def __init__(self, tracer: Tracer, server_span: Span) -> None:
        self._tracer = tracer
        self.server_span = server_span
        sc = server_span.get_span_context()
        self.trace_id = f"{sc.trace_id:032x}"
        self.span_id = f"{sc.span_id:016x}"
        self.recording = server_span.is_recording()
        # the parent of every child span, made once
        self._context: Context | None = set_span_in_context(server_span) if self.recording else None
        self.attempts = 0

    async def stage(self, flt: Filter, ctx: RequestContext) -> None:
        """Run one chain stage, in a span of its own when the request is sampled and the stage is one worth one."""
        stage = flt.stage
        if self._context is None or stage not in TRACED_STAGES:
            await flt(ctx)
            return
        span = self._tracer.start_span(
            _STAGE_NAMES[stage], context=self._context, kind=SpanKind.INTERNAL, attributes=_STAGE_ATTRS[stage]
        )
        shadowed = len(ctx.shadow)
        try:
            await flt(ctx)
        except GatewayError as err:
            span.set_attribute("error.type", err.reason)
            span.set_attribute("mcp_gateway.refused.reason", err.reason)
            span.set_status(Status(StatusCode.ERROR, err.reason))
            raise
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR))
            raise
        finally:
            if len(ctx.shadow) > shadowed:
                span.set_attribute("mcp_gateway.shadow.reasons", [d.reason for d in ctx.shadow[shadowed:]])
            span.end()

    def attempt(self, ctx: RequestContext, headers: CIMultiDict[str], url: str, method: str) -> None:
        """An upstream attempt is about to be sent with `headers`: its span starts, and the upstream gets it as
        parent (replacing whatever trace context the client sent). Unsampled: the server span's context goes."""
        self.attempts += 1
        if self._context is None:
            inject(headers, self.server_span.get_span_context())
            return
        attrs = dict(_upstream_attrs(url))
        attrs["http.request.method"] = method
        attrs["network.protocol.name"] = "websocket" if url.startswith(("ws:", "wss:")) else "http"
        if self.attempts > 1:
            attrs["http.request.resend_count"] = self.attempts - 1
        span = self._tracer.start_span(method, context=self._context, kind=SpanKind.CLIENT, attributes=attrs)
        inject(headers, span.get_span_context())
        attempt = Attempt(span)
        ctx.outcome_hooks.append(attempt.outcome)
        ctx.releases.append(attempt.end)

    def finish(self, ctx: RequestContext) -> None:
        span = self.server_span
        if self.recording:
            name, attrs = server_attributes(ctx)
            span.update_name(name)
            span.set_attributes(attrs)
            if ctx.refused_stage is not None or (ctx.http_status or 0) >= 500:
                span.set_status(Status(StatusCode.ERROR, ctx.refused_reason))
        span.end()


def server_attributes(ctx: RequestContext) -> tuple[str, dict[str, Any]]:
    """The server span's name and attributes, from the finished request."""
    attrs: dict[str, Any] = {
        "http.request.method": ctx.http_method if ctx.http_method != "WS" else "GET",
        "network.transport": "tcp",
        "network.protocol.name": "websocket" if ctx.transport == "websocket" else "http",
        "client.address": _text(ctx.client_ip, 64),
        "mcp_gateway.server": _text(ctx.server_name, bounds.SERVER_MAX),
        "mcp_gateway.transport": ctx.transport,
        "mcp_gateway.request_id": _identifier(ctx.request_id, bounds.RPC_ID_MAX),
    }
    request = ctx.request
    if request is not None:
        path = getattr(request, "path", None)
        if type(path) is str:
            attrs["url.path"] = _text(path, PATH_MAX)
        scheme = getattr(request, "scheme", None)
        if scheme in ("http", "https"):
            attrs["url.scheme"] = scheme
    headers = ctx.headers
    if headers is not None:
        _host_attributes(headers.get("Host"), attrs)
    status = ctx.http_status
    if status is not None:
        attrs["http.response.status_code"] = status
    name = ctx.http_method
    method = ctx.method
    if method is not None:
        method = _identifier(method, bounds.METHOD_MAX)
        attrs["mcp.method.name"] = method
        name = method
        tool = ctx.tool
        if tool is not None:
            tool = _identifier(tool, bounds.NAME_MAX)
            attrs["gen_ai.tool.name"] = tool
            if method == "tools/call":
                attrs["gen_ai.operation.name"] = "execute_tool"
            # the span name stays low in cardinality: a name any caller may make up is not put in it
            if ctx.refused_stage is None or ctx.refused_stage in _AUTHORIZED_AFTER:
                name = f"{method} {tool}"
    if ctx.protocol_version is not None:
        attrs["mcp.protocol.version"] = _text(ctx.protocol_version, VERSION_MAX)
    if ctx.session_id is not None and ctx.transport != "websocket":
        attrs["mcp.session.id"] = session_hash(ctx.session_id)
    tenant = ctx.tenant
    if tenant is not None:
        attrs["mcp_gateway.tenant"] = _text(tenant, bounds.SUBJECT_MAX)
    if ctx.upstream_url is not None:
        attrs["mcp_gateway.upstream"] = _upstream_attrs(ctx.upstream_url)["url.full"]
    if ctx.refused_stage is not None:
        attrs["mcp_gateway.refused.stage"] = ctx.refused_stage
        if ctx.refused_reason is not None:
            attrs["mcp_gateway.refused.reason"] = ctx.refused_reason
            attrs["error.type"] = ctx.refused_reason
    elif status is not None and status >= 500:
        attrs["error.type"] = str(status)
    if ctx.rpc_error_code is not None:
        attrs["rpc.response.status_code"] = str(ctx.rpc_error_code)
    retries = ctx.notes.get("retries")
    if type(retries) is int:
        attrs["mcp_gateway.retries"] = retries
    return name, attrs


class Tracing:
    """Tracing on: begins each request's trace (`Chain.run`) and ends it (a chain observer, first of them, so the
    audit record and the access log that follow carry its ids)."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def begin(self, ctx: RequestContext) -> RequestTrace:
        remote = extract(ctx.headers)
        parent = set_span_in_context(NonRecordingSpan(remote)) if remote is not None else None
        span = self._tracer.start_span(
            ctx.http_method,
            context=parent,
            kind=SpanKind.SERVER,
            start_time=int(ctx.started_wall * 1e9),
        )
        trace = RequestTrace(self._tracer, span)
        ctx.trace = trace
        # every log line of this request from here on carries the ids (each request runs in a task of its own)
        structlog.contextvars.bind_contextvars(trace_id=trace.trace_id, span_id=trace.span_id)
        return trace

    def observe(self, ctx: RequestContext) -> None:
        trace = ctx.trace
        if trace is None:
            # refused before the chain ran (Host, Origin, a malformed session id), or a WebSocket upgrade
            trace = self.begin(ctx)
        trace.finish(ctx)
        structlog.contextvars.unbind_contextvars("trace_id", "span_id")
