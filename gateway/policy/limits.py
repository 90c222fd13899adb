"""limits.yaml: rate-limit tiers, tenant fairness, costs, concurrency caps and IP protection."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from gateway.policy.base import Model, NonNegFloat, NonNegInt, PositiveFloat, PositiveInt, Rate


def _default_tiers() -> dict[str, Rate]:
    return {
        "admin": Rate(rate=1000, per="minute"),
        "user": Rate(rate=100, per="minute"),
        "anonymous": Rate(rate=20, per="minute"),
    }


class Costs(Model):
    """What non-tool requests cost against the limits (0 = free)."""

    initialize: NonNegInt = 0
    ping: NonNegInt = 0
    stream: NonNegInt = 0  # GET event streams
    default: NonNegInt = 1  # every other request


class Fairness(Model):
    enabled: bool = True
    interval_seconds: PositiveFloat = 1.0
    # a tenant counts as active for this long after its last request
    active_window_seconds: PositiveFloat = 5.0


class DdosPolicy(Model):
    enabled: bool = True
    strikes: PositiveInt = 20  # refusals / auth failures within the window earn a block
    window_seconds: PositiveFloat = 60.0
    block_seconds: list[PositiveFloat] = Field(default_factory=lambda: [60.0, 300.0, 1800.0])
    allowlist: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])


class LimitsFile(Model):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    fail_mode: Literal["fallback", "open", "closed"] = "fallback"
    # share of global/tenant rates each replica takes when it falls back to its in-process store
    fallback_share: float = Field(1.0, gt=0, le=1)
    ip: Rate | None = None
    global_: Rate | None = Field(None, alias="global")
    tenant_default: Rate | None = None
    tiers: dict[str, Rate] = Field(default_factory=_default_tiers)
    fairness: Fairness = Field(default_factory=Fairness)
    costs: Costs = Field(default_factory=Costs)
    ddos: DdosPolicy = Field(default_factory=DdosPolicy)
    concurrency_slot_ttl_seconds: NonNegFloat = 300.0
