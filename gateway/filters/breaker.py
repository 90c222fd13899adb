"""Stage 5: the upstream instance's circuit breaker.

The stage chooses the instance first (`UpstreamChoice.choose`, gateway/upstream/choice.py: a session's own
instance, or the balancer's pick; the forward step reuses the answer), counts the request as outstanding there,
and asks that instance's breaker. Open -> CircuitOpen (503 + Retry-After) at once, without any connection
attempt. A closed breaker costs a few attribute reads: no Redis, no lock. The outcome of the call comes back
through `ctx.outcome_hooks`.

A sessionless request refused by one instance's breaker (half-open with its probes taken) is offered to another
instance (`UpstreamChoice.another`) before it is refused. `mode: shadow` breakers record
`ShadowDecision("breaker", "circuit_open")` and admit.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.context import RequestContext, ShadowDecision, UpstreamOutcome
from gateway.errors import CircuitOpen, GatewayError, SessionNotFound
from gateway.policy.snapshot import Snapshot
from gateway.resilience.registry import BreakerRegistry
from gateway.resilience.state import Admission, CircuitBreaker, is_failure
from gateway.upstream.choice import UpstreamChoice
from gateway.upstream.health import HealthMonitor


class _Ticket:
    """One admitted request's link back to its breaker: records the outcome, or gives a probe slot back."""

    __slots__ = ("adm", "breaker", "clock", "registry", "reported", "server", "shared", "url")

    def __init__(
        self,
        breaker: CircuitBreaker,
        url: str,
        adm: Admission,
        shared: bool,
        registry: BreakerRegistry,
        server: str,
        clock: Callable[[], float],
    ) -> None:
        self.breaker = breaker
        self.url = url
        self.adm = adm
        self.shared = shared  # the probe slot came from Redis (so its result goes there too)
        self.registry = registry
        self.server = server
        self.clock = clock
        self.reported = False

    def outcome(self, o: UpstreamOutcome) -> None:
        if o.error == "pool":
            # the gateway's own pool cap, not the upstream's failure: counting it would let the gateway open a
            # healthy upstream's breaker under its own load; a probe slot it held is given back untested
            if o.upstream == self.url:
                self.release()
            return
        br = self.breaker
        pol = br.policy
        failed = is_failure(pol, o.status, o.error)
        slow = o.error == "timeout" or o.latency >= pol.slow_call_seconds
        now = self.clock()
        if o.upstream != self.url:
            # a retry went to another instance: its breaker learns from it like from any closed-state call
            br = self.registry.get(self.server, o.upstream, pol)
            self._note(br, o, failed)
            br.record(br.gen, False, failed, slow, now)
            return
        self._note(br, o, failed)
        probe = self.adm.probe and not self.reported
        self.reported = True
        store = self.registry.shared
        if probe and self.shared and store is not None:
            store.report_probe(br, self.adm.gen, ok=not (failed or slow))
        else:
            br.record(self.adm.gen, probe, failed, slow, now)

    @staticmethod
    def _note(br: CircuitBreaker, o: UpstreamOutcome, failed: bool) -> None:
        br.last_latency = o.latency
        if failed:
            br.last_error = o.error or f"status {o.status}"
            br.last_error_at = time.time()

    def release(self) -> None:
        if self.reported or not self.adm.probe:
            return
        self.reported = True
        store = self.registry.shared
        if self.shared and store is not None:
            store.release(self.breaker, self.adm.gen)
        else:
            self.breaker.release_probe(self.adm.gen)


class BreakerFilter:
    stage = "breaker"

    def __init__(
        self,
        registry: BreakerRegistry,
        choice: UpstreamChoice,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._choice = choice
        # the choice's own callables, read once here
        self._choose = choice.choose
        self._begin = choice.begin
        self._clock = clock

    async def __call__(self, ctx: RequestContext) -> None:
        server = ctx.server
        if server is None:
            return
        try:
            url = await self._choose(ctx)
        except SessionNotFound as err:
            # a routing answer, not a breaker decision: attribute it as the forward stage always did
            err.stage = err.stage or "forward"
            raise
        pol = server.breaker
        if pol.enabled:
            url = await self._admit(ctx, url)
        ctx.releases.append(self._begin(ctx.server_name, url))

    async def _admit(self, ctx: RequestContext, url: str) -> str:
        server = ctx.server
        assert server is not None
        pol = server.breaker
        tried: list[str] = []
        while True:
            br = self._registry.get(ctx.server_name, url, pol)
            store = self._registry.shared
            shared = store is not None and store.available
            adm = br.admit(self._clock(), shared)
            if adm.coordinate and store is not None:
                adm = await store.acquire(br)
                shared = adm.probe and store.available
            if adm.allowed:
                break
            if pol.mode == "shadow":
                ctx.shadow.append(ShadowDecision("breaker", "circuit_open"))
                return url  # admitted unrecorded: an open breaker learns only from its probes
            tried.append(url)
            other = self._other_instance(ctx, tried)
            if other is None:
                raise CircuitOpen("upstream circuit open: not sending requests for now", retry_after=adm.retry_after)
            url = ctx.upstream_url = other
        ticket = _Ticket(br, url, adm, shared, self._registry, ctx.server_name, self._clock)
        ctx.outcome_hooks.append(ticket.outcome)
        if adm.probe:
            ctx.releases.append(ticket.release)
        return url

    def _other_instance(self, ctx: RequestContext, tried: list[str]) -> str | None:
        server = ctx.server
        if ctx.session_id is not None or server is None or len(tried) >= len(server.upstreams):
            return None
        try:
            return self._choice.another(ctx.server_name, server, tried)
        except GatewayError:
            return None


def build(
    snapshot: Snapshot,
    registry: BreakerRegistry,
    health: HealthMonitor,
    choice: UpstreamChoice,
) -> BreakerFilter:
    """The stage for `snapshot`; hands the snapshot to the registry and the health monitor, which is how breaker
    policies and health checks follow reloads."""
    registry.sync(snapshot)
    health.sync(snapshot)
    return BreakerFilter(registry, choice)
