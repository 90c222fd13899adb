"""Breaker, health-check, retry and pool settings of a server (servers.yaml). Defaults are documented in README."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.policy.base import Mode, Model, NonNegFloat, NonNegInt, PositiveFloat, PositiveInt


class BreakerPolicy(Model):
    enabled: bool = True
    mode: Mode = "enforce"
    window: PositiveInt = 20  # calls in the sliding window
    min_calls: PositiveInt = 10
    failure_rate: float = Field(0.5, gt=0, le=1)
    slow_call_rate: float = Field(1.0, gt=0, le=1)
    slow_call_seconds: PositiveFloat = 10.0
    consecutive_failures: PositiveInt = 5
    open_seconds: PositiveFloat = 5.0
    max_open_seconds: PositiveFloat = 120.0
    backoff_multiplier: float = Field(2.0, ge=1)
    half_open_probes: PositiveInt = 1
    # which upstream answers count as failures: "5xx" or explicit codes
    failure_statuses: list[int] | Literal["5xx"] = "5xx"


class HealthPolicy(Model):
    enabled: bool = True
    kind: Literal["mcp", "stateless", "http"] = "mcp"
    path: str | None = None  # for kind: http
    interval: PositiveFloat = 10.0
    timeout: PositiveFloat = 3.0
    healthy_threshold: PositiveInt = 2
    unhealthy_threshold: PositiveInt = 3
    jitter: float = Field(0.1, ge=0, le=1)


class RetryPolicy(Model):
    attempts: NonNegInt = 1  # extra attempts beyond the first
    budget_ratio: float = Field(0.2, ge=0, le=1)
    backoff_seconds: NonNegFloat = 0.05
    idempotent_tools: list[str] = Field(default_factory=list)


class PoolPolicy(Model):
    max_connections: PositiveInt = 100
    max_wait_seconds: PositiveFloat = 5.0
    keepalive_seconds: PositiveFloat = 30.0
