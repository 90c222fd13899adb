"""limits.yaml: rate-limit tiers, tenant fairness, costs, concurrency caps and IP protection.

Every field has a documented default; docs/rate-limits.md is the reference.
"""

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
    """What non-tool requests cost against the limits (0 = free: not charged and never refused by a rate)."""

    # creating a session (an `initialize`, or the GET that opens a legacy HTTP+SSE session) is not free: each holds
    # upstream memory until it ends, so a caller cannot open them faster than its rate allows
    initialize: NonNegInt = 1
    ping: NonNegInt = 0
    stream: NonNegInt = 0  # GET event streams
    default: NonNegInt = 1  # every other request; a `tools/call` without a `tool_costs` entry costs this too


class Fairness(Model):
    """Weighted max-min division of the global rate among the tenants active now."""

    enabled: bool = True
    # how often demand is exchanged and the shares recomputed
    interval_seconds: PositiveFloat = Field(1.0, ge=0.1, le=60)
    # a tenant counts as active for this long after its last request (sizes a newcomer's first share)
    active_window_seconds: PositiveFloat = 5.0
    # satisfied tenants are allotted this much more than they asked for, so normal jitter in their load is not
    # refused; the global tier keeps the hard ceiling
    headroom: NonNegFloat = Field(0.2, le=4)
    # burst of a tenant's fair-share tier, in seconds of its share (at least 1 request)
    burst_seconds: PositiveFloat = 1.0


class DdosPolicy(Model):
    enabled: bool = True
    strikes: PositiveInt = 20  # refusals / auth failures within the window earn a block
    window_seconds: PositiveFloat = 60.0
    # block lengths for the 1st, 2nd, 3rd ... block of one IP (the last one repeats)
    block_seconds: list[PositiveFloat] = Field(default_factory=lambda: [60.0, 300.0, 1800.0], min_length=1)
    # an IP's block count is forgotten after this long without a new block
    forget_seconds: PositiveFloat = 86400.0
    allowlist: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])


class StreamCaps(Model):
    """Default caps on the long-lived streams (GET event streams, legacy SSE streams, 2026 listen streams) one API
    key or one tenant holds open at once, over every server and replica. A key's or tenant's own `max_open_streams`
    replaces the default; `null` leaves keys or tenants without one uncapped. An SDK client holds one stream per
    session."""

    per_key: PositiveInt | None = 16  # the `max_open_streams` of every API key that sets none
    per_tenant: PositiveInt | None = 64  # the `max_open_streams` of every tenant that sets none


class LimitsFile(Model):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    fail_mode: Literal["fallback", "open", "closed"] = "fallback"
    # share of global/tenant rates each replica takes when it falls back to its in-process store
    fallback_share: float = Field(1.0, gt=0, le=1)
    # how often a replica in fallback checks whether Redis is back (in the background, never on a request)
    probe_interval_seconds: PositiveFloat = Field(0.25, le=10)
    # per client IP, enforced by each replica in process before parsing (flood guard; no Redis round trip)
    ip: Rate | None = None
    global_: Rate | None = Field(None, alias="global")
    # a static per-tenant ceiling; with fairness on, the tenant's enforced rate is min(fair share, this)
    tenant_default: Rate | None = None
    tiers: dict[str, Rate] = Field(default_factory=_default_tiers)
    fairness: Fairness = Field(default_factory=Fairness)
    costs: Costs = Field(default_factory=Costs)
    streams: StreamCaps = Field(default_factory=StreamCaps)
    ddos: DdosPolicy = Field(default_factory=DdosPolicy)
    # a concurrency slot not refreshed for this long is dropped (a crashed replica cannot leak slots)
    concurrency_slot_ttl_seconds: NonNegFloat = Field(300.0, ge=1)
