"""limits.yaml (plus the rate and cap fields of tenants, keys and servers) compiled once per policy snapshot into
plain lookups, so the request path never walks policy models."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.policy.base import Rate
from gateway.policy.limits import Costs
from gateway.policy.snapshot import Snapshot
from gateway.ratelimit.ipblock import DdosParams, parse_allowlist
from gateway.ratelimit.shares import FairParams


@dataclass(frozen=True, slots=True)
class CompiledRate:
    interval: float  # seconds per unit
    burst: float
    shadow: bool

    @property
    def rate(self) -> float:
        return 1.0 / self.interval


def compile_rate(rate: Rate | None) -> CompiledRate | None:
    if rate is None:
        return None
    return CompiledRate(1.0 / rate.per_second, float(rate.effective_burst), rate.mode == "shadow")


@dataclass(frozen=True, slots=True)
class Caps:
    calls: int | None = None
    streams: int | None = None


@dataclass(frozen=True, slots=True)
class CompiledLimits:
    version: str
    ip: CompiledRate | None
    global_: CompiledRate | None
    tenant_ceiling: CompiledRate | None
    roles: Mapping[str, CompiledRate]
    keys: Mapping[str, CompiledRate]
    tool_costs: Mapping[str, Mapping[str, int]]
    costs: Costs
    fair: FairParams | None
    fair_burst_seconds: float
    tenant_caps: Mapping[str, Caps]
    key_caps: Mapping[str, Caps]
    # `limits.streams`: the open-stream cap of a tenant or key without its own `max_open_streams` (None: no cap)
    tenant_streams: int | None
    key_streams: int | None
    fail_mode: str
    fallback_share: float
    probe_interval: float
    slot_ttl: float
    ddos: DdosParams
    # the RateLimit-Policy window of each static tier, precomputed
    windows: Mapping[str, int] = field(default_factory=dict)

    @property
    def any_rate(self) -> bool:
        return bool(self.global_ or self.tenant_ceiling or self.roles or self.keys)


def window_seconds(interval: float, burst: float) -> int:
    """The RateLimit-Policy `w`: how long an idle client takes to earn its whole quota back."""
    return max(1, math.ceil(interval * burst - 1e-9))


def compile_limits(snapshot: Snapshot) -> CompiledLimits:
    lim = snapshot.limits
    global_ = compile_rate(lim.global_)
    ceiling = compile_rate(lim.tenant_default)
    fair: FairParams | None = None
    if lim.fairness.enabled and global_ is not None:
        fair = FairParams(
            capacity=global_.rate,
            interval=lim.fairness.interval_seconds,
            active_window=lim.fairness.active_window_seconds,
            headroom=lim.fairness.headroom,
            weights=MappingProxyType({t: p.weight for t, p in snapshot.tenants.items()}),
            reserved=MappingProxyType({t: p.reserved_rps for t, p in snapshot.tenants.items() if p.reserved_rps}),
            ceiling=ceiling.rate if ceiling is not None else math.inf,
        )
    roles = {role: r for role, rate in lim.tiers.items() if (r := compile_rate(rate)) is not None}
    keys = {kid: r for kid, k in snapshot.keys.items() if (r := compile_rate(k.rate_limit)) is not None}
    tool_costs = {name: MappingProxyType(dict(s.tool_costs)) for name, s in snapshot.servers.items() if s.tool_costs}
    tenant_caps = {
        t: Caps(p.max_concurrent_calls, p.max_open_streams)
        for t, p in snapshot.tenants.items()
        if p.max_concurrent_calls or p.max_open_streams
    }
    key_caps = {
        kid: Caps(k.max_concurrent_calls, k.max_open_streams)
        for kid, k in snapshot.keys.items()
        if k.max_concurrent_calls or k.max_open_streams
    }
    windows: dict[str, int] = {}
    if global_ is not None:
        windows["global"] = window_seconds(global_.interval, global_.burst)
    d = lim.ddos
    return CompiledLimits(
        version=snapshot.version,
        ip=compile_rate(lim.ip),
        global_=global_,
        tenant_ceiling=ceiling,
        roles=MappingProxyType(roles),
        keys=MappingProxyType(keys),
        tool_costs=MappingProxyType(tool_costs),
        costs=lim.costs,
        fair=fair,
        fair_burst_seconds=lim.fairness.burst_seconds,
        tenant_caps=MappingProxyType(tenant_caps),
        key_caps=MappingProxyType(key_caps),
        tenant_streams=lim.streams.per_tenant,
        key_streams=lim.streams.per_key,
        fail_mode=lim.fail_mode,
        fallback_share=lim.fallback_share,
        probe_interval=lim.probe_interval_seconds,
        slot_ttl=lim.concurrency_slot_ttl_seconds,
        ddos=DdosParams(
            enabled=d.enabled,
            strikes=d.strikes,
            window=d.window_seconds,
            blocks=tuple(d.block_seconds),
            forget=d.forget_seconds,
            allowlist=parse_allowlist(d.allowlist),
        ),
        windows=MappingProxyType(windows),
    )
