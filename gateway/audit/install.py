"""Wiring of the audit trail: the pipeline (chain observer), its sink and spool, metrics, lifecycle, admin route."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.audit.metrics import AuditMetrics
from gateway.audit.pipeline import AuditPipeline
from gateway.audit.postgres import PostgresSink
from gateway.audit.sinks import AuditSink, JsonlFileSink
from gateway.metrics import METRICS
from gateway.observers import add_observer
from gateway.ops import add_readiness_check
from gateway.settings import Settings

AUDIT: web.AppKey[AuditPipeline] = web.AppKey("audit_pipeline", AuditPipeline)


def build_sink(settings: Settings) -> AuditSink | None:
    """The configured sink; None for `sink: log` (the structured log is the only output then)."""
    audit = settings.audit
    if audit.sink == "file":
        return JsonlFileSink(settings.path(audit.path))
    if audit.sink == "postgres":
        if not settings.postgres.dsn:
            raise ValueError("audit.sink is 'postgres' but postgres.dsn (MGW_POSTGRES_DSN) is not set")
        return PostgresSink(
            settings.postgres.dsn,
            partitions_ahead_days=audit.partitions_ahead_days,
            retention_days=audit.retention_days,
        )
    return None


def install(app: web.Application, settings: Settings) -> None:
    metrics = AuditMetrics(app[METRICS].registry)
    pipeline = AuditPipeline(settings.audit, metrics, build_sink(settings), settings.path(settings.audit.spool_path))
    app[AUDIT] = pipeline
    add_observer(app, pipeline)
    if settings.audit.sink == "postgres":

        async def postgres_ready() -> str | None:
            # not required: while PostgreSQL is down records are spooled and replayed later (degraded)
            return None if pipeline.sink_up else "postgres: audit sink down, spooling"

        add_readiness_check(app, "postgres", postgres_ready, required=False)

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await pipeline.start()
        yield
        # runs after the server stopped taking requests and in-flight ones finished: nothing is left behind
        await pipeline.stop()

    app.cleanup_ctx.append(lifecycle)

    from gateway.admin.audit import install_routes

    install_routes(app, settings)
