"""Prometheus metrics of the audit pipeline (registered on the app's registry; no labels beyond sink/reason)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AuditMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.queue_depth = Gauge("mcp_gateway_audit_queue_depth", "Audit records waiting in memory", registry=r)
        self.queue_age = Gauge(
            "mcp_gateway_audit_queue_age_seconds",
            "Age of the oldest audit record waiting in memory (0 when none waits): how far the trail lags",
            registry=r,
        )
        self.spool_bytes = Gauge(
            "mcp_gateway_audit_spool_bytes", "Size of the local spool of records not yet in the sink", registry=r
        )
        self.sink_up = Gauge("mcp_gateway_audit_sink_up", "1 while the audit sink accepts writes", registry=r)
        self.written = Counter(
            "mcp_gateway_audit_records_written_total", "Audit records written to the sink", ["sink"], registry=r
        )
        self.spooled = Counter(
            "mcp_gateway_audit_records_spooled_total", "Audit records written to the local spool", registry=r
        )
        self.replayed = Counter(
            "mcp_gateway_audit_records_replayed_total", "Spooled audit records replayed into the sink", registry=r
        )
        self.dropped = Counter(
            "mcp_gateway_audit_records_dropped_total",
            "Audit records lost (queue full or spool unwritable); must stay 0",
            ["reason"],
            registry=r,
        )
        self.rejected = Counter(
            "mcp_gateway_audit_records_rejected_total",
            "Audit records the sink refused as invalid; kept in the <spool_path>.rejected file instead",
            registry=r,
        )
        self.partitions_dropped = Counter(
            "mcp_gateway_audit_partitions_dropped_total", "Daily audit partitions dropped by retention", registry=r
        )
        self.sink_errors = Counter(
            "mcp_gateway_audit_sink_errors_total", "Failed writes to the audit sink", ["sink"], registry=r
        )
        self.dropped_queue_full = self.dropped.labels("queue_full")
        self.dropped_spool = self.dropped.labels("spool_failed")
        self.dropped_build = self.dropped.labels("build_failed")
        for child in (self.dropped_queue_full, self.dropped_spool, self.dropped_build):
            child.inc(0)
