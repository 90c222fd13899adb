"""Stage 4: multi-tier rate limits and concurrency caps, all decided in one store call.

Tiers (each only when policy defines it): global, tenant (its fair share of the global rate, capped by
`tenant_default`), user (by role; anonymous callers per IP), API key (`rate_limit` of the key). The cost of a
request is what `limits.costs` and the server's `tool_costs` say; notifications, responses and
`notifications/cancelled` cost nothing and are never limited. A tools/call takes a concurrency slot when the tenant
or key has a cap; a stream (a GET event stream or a 2026 listen POST) takes an open-stream slot of its tenant and of
its API key, capped by their own `max_open_streams` or else by `limits.streams` (16 per key, 64 per tenant by
default: on unless turned off). Slots are released through `ctx.releases`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gateway.auth.principal import Principal
from gateway.context import RequestContext, ShadowDecision
from gateway.errors import ConcurrencyLimited, RateLimited
from gateway.jsonrpc import Kind
from gateway.policy.snapshot import Snapshot
from gateway.ratelimit.compiled import CompiledLimits
from gateway.ratelimit.gcra import SlotCheck, SlotHold, TierCheck, TierResult, Verdict
from gateway.ratelimit.headers import add_limit_headers, limit_headers, policy_value, ratelimit_value, tightest
from gateway.ratelimit.service import RateLimiter
from gateway.ratelimit.shares import ANONYMOUS_TENANT
from gateway.ratelimit.store import MemoryStore, PreparedTiers
from gateway.upstream.choice import UpstreamChoice
from gateway.upstream.streams import is_stream

CALL_METHOD = "tools/call"
# about 1.5 kB a plan (four tiers): a few MB at most per snapshot
_MAX_CACHED_PLANS = 4096


def request_cost(ctx: RequestContext, c: CompiledLimits) -> tuple[int, bool]:
    """(cost, takes a tools/call slot). Only requests are charged."""
    if ctx.http_method == "GET":
        if ctx.transport == "sse":  # a legacy HTTP+SSE stream is a new session as well
            return max(c.costs.stream, c.costs.initialize), False
        return c.costs.stream, False
    if ctx.http_method not in {"POST", "WS"}:
        return 0, False
    costs = c.costs
    tool_costs = c.tool_costs.get(ctx.server_name)
    total = 0
    calls = False
    for env in ctx.envelopes:
        if env.kind is not Kind.REQUEST:
            continue
        method = env.method
        if method == CALL_METHOD:
            calls = True
            if tool_costs is not None and env.name is not None:
                total += tool_costs.get(env.name, costs.default)
            else:
                total += costs.default
        elif method == "initialize":
            total += costs.initialize
        elif method == "ping":
            total += costs.ping
        else:
            total += costs.default
    return total, calls


class TierPlan:
    """The tiers one client's requests are charged against under one policy snapshot, and the `RateLimit-Policy`
    value they advertise. A client's tiers are the same from one request to the next, and building them (plus
    formatting the policy header) was a measurable part of the stage's cost, so they are built once per client, cost
    and fair share. `tiers` is handed to the store as it is: stores only read it."""

    __slots__ = ("policy", "prepared", "share", "tiers")

    def __init__(self, tiers: list[TierCheck], share: float | None) -> None:
        self.tiers = tiers
        self.share = share  # the tenant's fair share the tenant tier was built for (None: no fair share)
        self.policy = policy_value(tiers)
        self.prepared = PreparedTiers(tiers)


_NO_SLOTS: tuple[SlotCheck, ...] = ()


def _no_prefetch(ctx: RequestContext) -> None:
    """Without an upstream choice (tests of the stage alone) no session lookup is started early."""


class RateLimitFilter:
    stage = "ratelimit"

    def __init__(self, compiled: CompiledLimits, limiter: RateLimiter, choice: UpstreamChoice | None = None) -> None:
        self._c = compiled
        self._limiter = limiter
        # the upstream choice's session lookup, started early to share the limiter's Redis round trip
        self._prefetch_session = choice.prefetch if choice is not None else _no_prefetch
        self._call_caps = any(c.calls for c in (*compiled.tenant_caps.values(), *compiled.key_caps.values()))
        self._stream_caps = bool(
            compiled.tenant_streams
            or compiled.key_streams
            or any(c.streams for c in (*compiled.tenant_caps.values(), *compiled.key_caps.values()))
        )
        # plans by (cost, tenant, what the user and key tiers depend on); bounded: cleared when full
        self._plans: dict[tuple[object, ...], TierPlan] = {}
        # the labelled decisions counter of the in-process fast path, looked up on its first use (creating it
        # earlier would export a zero series that the unoptimised path would not)
        self._allowed_memory: Any = None

    def _plan(self, ctx: RequestContext, p: Principal | None, tenant: str, cost: int) -> TierPlan:
        key: tuple[object, ...]
        if p is None:
            key = (cost, tenant)
        else:
            key = (cost, tenant, p.role, p.tenant, p.subject, p.key_id, ctx.client_ip if p.is_anonymous else None)
        share = None
        if self._c.fair is not None:
            share = self._limiter.fair.charge(tenant, cost)
        plan = self._plans.get(key)
        if plan is None or plan.share != share:
            plan = TierPlan(self._tiers(ctx, tenant, cost, share), share)
            if len(self._plans) >= _MAX_CACHED_PLANS:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _tiers(self, ctx: RequestContext, tenant: str, cost: int, share: float | None) -> list[TierCheck]:
        c = self._c
        p = ctx.principal
        tiers: list[TierCheck] = []
        g = c.global_
        if g is not None:
            tiers.append(TierCheck("global", "g", g.interval, g.burst, cost, g.shadow, True))
        ceiling = c.tenant_ceiling
        if share is not None:
            # a share can be 0 (everything reserved by others): a tiny rate refuses without dividing by zero
            rate = max(1e-3, share if ceiling is None else min(share, ceiling.rate))
            if ceiling is not None:
                burst = ceiling.burst
            else:
                burst = rate * c.fair_burst_seconds
                if g is not None and self._limiter.fair.limited(tenant):
                    # a tenant held below what it wants gets at most its part of the global burst: otherwise the
                    # shares add up to more burst than the global tier holds, a tenant the global tier refused
                    # banks its own burst meanwhile and spends it later against the others (a newcomer joining a
                    # saturated pair got nothing for a second). Tenants under their share keep the full burst:
                    # it is what lets their jitter through.
                    burst = min(burst, g.burst * share * g.interval)
                burst = max(1.0, burst)
            shadow = ceiling.shadow if ceiling is not None else (g.shadow if g is not None else False)
            tiers.append(TierCheck("tenant", f"t:{tenant}", 1.0 / rate, burst, cost, shadow, True))
        elif ceiling is not None:
            tiers.append(
                TierCheck("tenant", f"t:{tenant}", ceiling.interval, ceiling.burst, cost, ceiling.shadow, True)
            )
        if p is not None:
            role = c.roles.get(p.role)
            if role is not None:
                # "u:" + who, who being "ip:<client ip>" for anonymous callers, "<tenant>:<subject>" otherwise
                key = f"u:ip:{ctx.client_ip}" if p.is_anonymous else f"u:{p.tenant}:{p.subject}"
                tiers.append(TierCheck("user", key, role.interval, role.burst, cost, role.shadow, False))
            if p.key_id is not None:
                k = c.keys.get(p.key_id)
                if k is not None:
                    tiers.append(TierCheck("key", f"k:{p.key_id}", k.interval, k.burst, cost, k.shadow, False))
        return tiers

    def _slots(self, ctx: RequestContext, tenant: str, calls: bool) -> list[SlotCheck]:
        """The caps of a tools/call (`calls`) or a stream."""
        kind = "calls" if calls else "streams"
        c = self._c
        p = ctx.principal
        out: list[SlotCheck] = []
        tcaps = c.tenant_caps.get(tenant)
        if tenant == ANONYMOUS_TENANT:
            # anonymous callers of each route count apart: those of one tenant's public server must not fill a cap
            # that another tenant's public server would share (their rates stay one tenant, docs/rate-limits.md)
            tenant = f"{ANONYMOUS_TENANT}:{ctx.server_name}"
        if calls:
            cap = tcaps.calls if tcaps is not None else None
        else:
            cap = (tcaps.streams if tcaps is not None else None) or c.tenant_streams
        if cap:
            out.append(SlotCheck(f"tenant_{kind}", f"c:t:{kind}:{tenant}", cap))
        if p is not None and p.key_id is not None:
            kcaps = c.key_caps.get(p.key_id)
            if calls:
                cap = kcaps.calls if kcaps is not None else None
            else:
                # keys of the PostgreSQL store are not in the snapshot: they get the default
                cap = (kcaps.streams if kcaps is not None else None) or c.key_streams
            if cap:
                out.append(SlotCheck(f"key_{kind}", f"c:k:{kind}:{p.key_id}", cap))
        elif not calls and c.key_streams and p is not None and p.is_anonymous:
            # an anonymous caller has no key: its client address stands for one (the route's anonymous callers
            # share one tenant bucket, which one address must not fill for the others: review finding)
            out.append(SlotCheck("key_streams", f"c:a:streams:{ctx.server_name}:{ctx.client_ip}", c.key_streams))
        return out

    async def __call__(self, ctx: RequestContext) -> None:
        c = self._c
        cost, calls = request_cost(ctx, c)
        p = ctx.principal
        tenant = (p.tenant if p is not None else None) or ANONYMOUS_TENANT
        slots: Sequence[SlotCheck] = _NO_SLOTS
        if calls:
            if self._call_caps:
                slots = self._slots(ctx, tenant, True)
        elif self._stream_caps and is_stream(ctx):
            slots = self._slots(ctx, tenant, False)
        plan = self._plan(ctx, p, tenant, cost) if cost > 0 else None
        tiers = plan.tiers if plan is not None else []
        if not tiers and not slots:
            return
        limiter = self._limiter
        backend = limiter.backend
        if plan is not None and backend.redis is None and not slots:
            # in-process store, rate tiers only: what backend.decide would do, without the coroutine, and without
            # building the Verdict when every tier admits
            got = backend.memory.decide_lean(plan.prepared)
            if not isinstance(got, Verdict):
                child = self._allowed_memory
                if child is None:
                    child = self._allowed_memory = limiter.metrics.decision_child(True, MemoryStore.name)
                child.inc()
                ctx.cost = cost
                ctx.notes["ratelimit_backend"] = MemoryStore.name
                _advertise(ctx.response_headers, plan, got)
                return
            verdict = got
        else:
            if backend.using_redis:
                self._prefetch_session(ctx)
            verdict = await backend.decide(tiers, slots, c.slot_ttl, c.fail_mode, c.fallback_share)
        metrics = limiter.metrics
        metrics.decided(verdict.allowed, verdict.backend)
        ctx.cost = cost
        ctx.notes["ratelimit_backend"] = verdict.backend
        for result in verdict.tiers:  # verdict.shadow_refusals, without building the list when there are none
            if result.shadow and not result.allowed:
                metrics.refused(result.name, True)
                ctx.shadow.append(ShadowDecision(self.stage, f"rate_limited:{result.name}"))
        if not verdict.allowed:
            if verdict.slot_refused is not None:
                slot = verdict.slot_refused
                metrics.refused(slot.name, False)
                ctx.notes["limit"] = slot.name
                raise ConcurrencyLimited(
                    f"too many concurrent {'tool calls' if calls else 'streams'} ({slot.name}, cap {slot.cap})",
                    retry_after=1.0,
                    data={"limit": slot.name, "cap": slot.cap},
                )
            refused = verdict.refused_by
            assert refused is not None
            metrics.refused(refused.name, False)
            ctx.notes["limit"] = refused.name
            raise RateLimited(
                f"rate limit exceeded ({refused.name})",
                retry_after=refused.retry_after,
                headers=limit_headers(verdict.tiers, refused),
                data={"limit": refused.name},
            )
        if verdict.tiers:
            if plan is None or verdict.backend == "fallback":
                # the in-process fallback decides scaled copies of the tiers: advertise what it decided
                add_limit_headers(ctx.response_headers, verdict.tiers)
            else:
                # the store's results carry the plan's tiers' bursts and intervals: the policy value is the plan's
                _advertise(ctx.response_headers, plan, tightest(verdict.tiers))
        hold = verdict.hold
        if hold is not None:
            ctx.releases.append(_releaser(limiter, hold))


def _advertise(headers: dict[str, str], plan: TierPlan, best: TierResult | None) -> None:
    """The RateLimit headers of an admitted request: the plan's policy, and the tier closest to refusing."""
    if plan.policy:
        headers["RateLimit-Policy"] = plan.policy
    if best is not None:
        headers["RateLimit"] = ratelimit_value(best)


def _releaser(limiter: RateLimiter, hold: SlotHold) -> Callable[[], None]:
    def release() -> None:
        limiter.backend.release(hold)

    return release


def build(snapshot: Snapshot, limiter: RateLimiter, choice: UpstreamChoice) -> RateLimitFilter:
    return RateLimitFilter(limiter.compiled(snapshot), limiter, choice)
