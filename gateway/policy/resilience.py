"""Breaker, health-check, retry and pool settings of a server (servers.yaml).

Every field has a documented default (docs/resilience.md). The numbers apply per upstream instance: each URL of a
server has its own breaker, health state and pool.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.policy.base import Mode, Model, NonNegFloat, NonNegInt, PositiveFloat, PositiveInt


class BreakerPolicy(Model):
    enabled: bool = True
    # shadow: evaluate and record `ShadowDecision("breaker", ...)`, but admit every request
    mode: Mode = "enforce"
    window: PositiveInt = 20  # the last N calls the rates are computed over
    min_calls: PositiveInt = 10  # no rate-based trip before the window holds this many calls
    failure_rate: float = Field(0.5, gt=0, le=1)
    slow_call_rate: float = Field(1.0, gt=0, le=1)
    slow_call_seconds: PositiveFloat = 10.0  # a call whose headers took at least this long is slow
    consecutive_failures: PositiveInt = 5
    open_seconds: PositiveFloat = 5.0  # first open period; each further trip multiplies it
    max_open_seconds: PositiveFloat = 120.0
    backoff_multiplier: float = Field(2.0, ge=1)
    half_open_probes: PositiveInt = 1  # calls admitted in half-open; all must succeed to close
    # a half-open round whose probes have not all reported after this long starts a new round (lost probes)
    probe_timeout_seconds: PositiveFloat = 30.0
    # which upstream answers count as failures: "5xx" or explicit codes
    failure_statuses: list[int] | Literal["5xx"] = "5xx"


class HealthPolicy(Model):
    enabled: bool = True
    # mcp: initialize + ping (+ DELETE of the probe session); stateless: a 2026-07-28 server/discover;
    # http: GET `path` on the instance's origin, 2xx = healthy
    kind: Literal["mcp", "stateless", "http"] = "mcp"
    path: str | None = None  # for kind: http
    interval: PositiveFloat = 10.0
    timeout: PositiveFloat = 3.0
    healthy_threshold: PositiveInt = 2
    unhealthy_threshold: PositiveInt = 3
    jitter: float = Field(0.1, ge=0, le=1)
    # an instance turning unhealthy trips its breaker; turning healthy lets an open breaker probe at once
    feed_breaker: bool = True


class RetryPolicy(Model):
    attempts: NonNegInt = 1  # extra attempts beyond the first
    budget_ratio: float = Field(0.2, ge=0, le=1)  # retries may add at most this share of the server's traffic
    # retries always allowed per 10 s window on top of the ratio (so a quiet server can still retry)
    budget_min_retries: NonNegInt = 3
    backoff_seconds: NonNegFloat = 0.05
    # tools whose calls may be retried after delivery (only if you know they are idempotent)
    idempotent_tools: list[str] = Field(default_factory=list)


class PoolPolicy(Model):
    # request/response connections per upstream origin (per gateway process)
    max_connections: PositiveInt = 100
    max_wait_seconds: PositiveFloat = 5.0
    keepalive_seconds: PositiveFloat = 30.0
    # long-lived streams (GET event streams, legacy SSE, 2026 listen) per upstream origin and process, in their own
    # pool: they never take a connection request/response traffic needs; divided fairly among tenants when full
    max_streams: PositiveInt = 100
