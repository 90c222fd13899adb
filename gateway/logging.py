"""Structured JSON logs (structlog). Tokens never reach a log: callers log reasons, never credentials."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import orjson
import structlog

if TYPE_CHECKING:
    from gateway.context import RequestContext


def _dumps(obj: object, default: object = None) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
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
    audit record and the upstream's own logs (which get the same id in `X-Request-ID`). Never credentials.
    """

    def __init__(self) -> None:
        self._log = structlog.get_logger("gateway.access")

    def observe(self, ctx: RequestContext) -> None:
        self._log.info(
            "request",
            request_id=ctx.request_id,
            server=ctx.server_name,
            transport=ctx.transport,
            http_method=ctx.http_method,
            method=ctx.method,
            tool=ctx.tool,
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
