"""Structured JSON logs (structlog). Tokens never reach a log: callers log reasons, never credentials, and every
rendered line (libraries' included: aiohttp puts a malformed request's head in its exception text) passes through
`redact_credentials` as a last line of defence."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import orjson
import structlog

from gateway import bounds
from gateway.redact import redact_credentials

if TYPE_CHECKING:
    from gateway.context import RequestContext


def _dumps(obj: object, default: object = None) -> str:
    # the serializer of every JSON line (structlog's and the standard library's): one scan of the rendered text
    return redact_credentials(orjson.dumps(obj, default=str).decode())


def _redacting(renderer: structlog.types.Processor) -> structlog.types.Processor:
    """A text renderer whose lines are redacted like the JSON serializer's."""

    def render(logger: object, name: str, event_dict: structlog.types.EventDict) -> str:
        return redact_credentials(str(renderer(logger, name, event_dict)))

    return render


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if fmt == "json"
        else _redacting(structlog.dev.ConsoleRenderer(colors=False))
    )
    # Libraries log through the standard library (aiohttp's "Error handling request" with its traceback, asyncio,
    # redis). Rendered by the same renderer, so every line on stderr is one JSON object a log pipeline can parse.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


class AccessLog:
    """Chain observer writing one JSON line per finished request (`logging.access_log: true`).

    Carries the request id the client sent or was given, so a client's report can be matched to this line, the
    audit record and the upstream's own logs (which get the same id in `X-Request-ID`), and with tracing on the
    trace and span id (every other line written while a traced request runs carries them too, bound in its
    logging context by gateway/tracing/spans.py). Never credentials.
    """

    def __init__(self) -> None:
        self._log = structlog.get_logger("gateway.access")

    def observe(self, ctx: RequestContext) -> None:
        trace = ctx.trace
        self._log.info(
            "request",
            request_id=ctx.request_id,
            # the gateway's span of this request (tracing on): a trace leads to this line and back
            trace_id=trace.trace_id if trace is not None else None,
            span_id=trace.span_id if trace is not None else None,
            server=bounds.bound(ctx.server_name, bounds.SERVER_MAX),
            transport=ctx.transport,
            http_method=ctx.http_method,
            # the client's own strings: bounded before they reach a line (gateway/bounds.py)
            method=bounds.bound_opt(ctx.method, bounds.METHOD_MAX),
            tool=bounds.bound_opt(ctx.tool, bounds.NAME_MAX),
            status=ctx.http_status,
            duration_ms=round(ctx.elapsed() * 1000, 3),
            upstream_status=ctx.upstream_status,
            tenant=ctx.tenant,
            client_ip=ctx.client_ip,
            refused_stage=ctx.refused_stage,
            refused_reason=ctx.refused_reason,
            bytes_in=ctx.bytes_in,
            bytes_out=ctx.bytes_out,
        )
