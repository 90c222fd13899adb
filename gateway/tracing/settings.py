"""`tracing:` in config.yaml: OpenTelemetry spans exported over OTLP/HTTP (docs/operations.md "Tracing")."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from gateway.policy.base import Model, PositiveFloat, PositiveInt, SecretRef


class TracingSampler(Model):
    """Parent-based ratio sampling: a request whose client sent a sampled `traceparent` is traced, one whose client
    sent an unsampled one is not, and a request without a (valid) `traceparent` is traced with probability
    `ratio` (decided on the trace id, so every gateway and upstream of a trace decides alike)."""

    type: Literal["parentbased_traceidratio"] = "parentbased_traceidratio"
    ratio: float = Field(1.0, ge=0.0, le=1.0)


class TracingSettings(Model):
    # off: no tracer, no span, and `traceparent`/`tracestate` pass through to the upstream unchanged, as any header
    enabled: bool = False
    # the collector's OTLP/HTTP traces endpoint (the full URL, path included)
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    protocol: Literal["http/protobuf"] = "http/protobuf"
    # headers sent with every export (a collector's or vendor's API key): values by reference only
    headers: dict[str, SecretRef] = Field(default_factory=dict)
    compression: Literal["none", "gzip"] = "none"
    # one export request's timeout; the batch is dropped (and counted by the SDK's log) when it passes
    timeout_seconds: PositiveFloat = 10.0
    sampler: TracingSampler = Field(default_factory=TracingSampler)
    service_name: str = Field("mcp-gateway", min_length=1)
    # more resource attributes (deployment.environment.name, service.namespace, ...); `service.name` is the above
    resource_attributes: dict[str, str] = Field(default_factory=dict)
    # the SDK's batch span processor: spans wait in a bounded queue (full: new spans are dropped, never waited for)
    # and its own thread exports them in batches
    max_queue_size: PositiveInt = 2048
    max_export_batch_size: PositiveInt = 512
    schedule_delay_seconds: PositiveFloat = 5.0

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL (the collector's /v1/traces)")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials; give them as `headers` by reference")
        return v

    @field_validator("headers")
    @classmethod
    def _header_names(cls, v: dict[str, SecretRef]) -> dict[str, SecretRef]:
        for name in v:
            if not name or not all(c.isalnum() or c in "-_" for c in name) or not name.isascii():
                raise ValueError(f"{name!r} is not an HTTP header name")
        return v

    @model_validator(mode="after")
    def _batch(self) -> TracingSettings:
        if self.max_export_batch_size > self.max_queue_size:
            raise ValueError("max_export_batch_size must not exceed max_queue_size")
        return self

    def resolve_headers(self, base_dir: Path) -> dict[str, str]:
        """The export headers' values; raises `LookupError` naming the missing reference (never a value)."""
        out: dict[str, str] = {}
        for name, ref in self.headers.items():
            try:
                out[name] = ref.resolve(base_dir)
            except LookupError as exc:
                raise LookupError(f"tracing.headers.{name}: {exc}") from None
        return out


def problems(tracing: TracingSettings, base_dir: Path) -> list[str]:
    """What `mcp-gateway run` must refuse to start with (gateway/preflight.py)."""
    if not tracing.enabled:
        return []
    out: list[str] = []
    try:
        tracing.resolve_headers(base_dir)
    except LookupError as exc:
        out.append(f"{exc}; set it or point the setting at the mounted secret")
    return out
