"""Factory of the audit trail: the pipeline (a chain observer) with its sink, spool and metrics, its lifecycle,
and its /readyz check. The answer hook and the admin route are added by gateway/app.py."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from gateway.audit.metrics import AuditMetrics
from gateway.audit.pipeline import AuditPipeline
from gateway.audit.postgres import PostgresSink
from gateway.audit.sinks import AuditSink, JsonlFileSink
from gateway.lifecycle import Lifecycle
from gateway.probes import ReadinessCheck
from gateway.settings import Settings


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


def build_audit(settings: Settings, registry: CollectorRegistry) -> tuple[AuditPipeline, Lifecycle]:
    pipeline = AuditPipeline(
        settings.audit,
        AuditMetrics(registry),
        build_sink(settings),
        settings.path(settings.audit.spool_path),
        journal=settings.audit.journal,
    )
    # stopped after the server stopped taking requests and in-flight ones finished: nothing is left behind
    return pipeline, Lifecycle("audit", pipeline.start, pipeline.stop)


def audit_readiness(settings: Settings, pipeline: AuditPipeline) -> ReadinessCheck | None:
    """PostgreSQL's check; not required: while it is down records are spooled and replayed later (degraded)."""
    if settings.audit.sink != "postgres":
        return None

    async def postgres_ready() -> str | None:
        return None if pipeline.sink_up else "postgres: audit sink down, spooling"

    return postgres_ready
