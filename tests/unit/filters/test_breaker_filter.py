"""The breaker stage in front of forward: enforce vs shadow, re-routing around a busy half-open instance,
probe slots given back when a probe never reports, and sessions staying on their instance."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from gateway.auth.principal import Principal
from gateway.context import RequestContext, UpstreamOutcome
from gateway.errors import CircuitOpen
from gateway.filters.breaker import BreakerFilter
from gateway.policy.servers import ServerPolicy
from gateway.resilience.registry import BreakerRegistry
from gateway.resilience.state import State
from gateway.sessions import MemorySessionStore, SessionBinding
from gateway.testing import FakeClock, context, server_policy
from gateway.upstream.balancer import Balancer
from gateway.upstream.choice import UpstreamChoice

pytestmark = pytest.mark.unit

A, B = "http://a/mcp", "http://b/mcp"


def setup(
    urls: tuple[str, ...] = (A,), **breaker: Any
) -> tuple[BreakerFilter, BreakerRegistry, Balancer, ServerPolicy, FakeClock, MemorySessionStore]:
    clock = FakeClock()
    registry = BreakerRegistry(clock=clock)
    pol = {"consecutive_failures": 2, "open_seconds": 5, "half_open_probes": 1, **breaker}
    srv = server_policy(urls, breaker=pol)

    def wait(server: str, url: str) -> float:
        br = registry.peek(server, url)
        if br is None or br.state is not State.OPEN or br.policy.mode == "shadow":
            return 0.0
        return max(0.0, br.open_until - clock())

    bal = Balancer(lambda s, u: True, wait)
    sessions = MemorySessionStore()
    flt = BreakerFilter(registry, UpstreamChoice(sessions, bal), clock=clock)
    return flt, registry, bal, srv, clock, sessions


def ctx(srv: ServerPolicy, session: str | None = None) -> RequestContext:
    return context("s", policy=srv, session_id=session, request_id=uuid.uuid4().hex)


def finish(c: RequestContext) -> None:
    for release in reversed(c.releases):
        release()


async def send(flt: BreakerFilter, srv: ServerPolicy, status: int | None, error: str | None = None) -> RequestContext:
    c = ctx(srv)
    await flt(c)
    assert c.upstream_url is not None
    c.report_outcome(UpstreamOutcome(c.upstream_url, status, error, 0.01))
    finish(c)
    return c


async def test_enforce_refuses_open_with_circuit_open() -> None:
    flt, registry, bal, srv, _clock, _ = setup()
    for _ in range(2):
        await send(flt, srv, 502)
    assert registry.peek("s", A).state is State.OPEN  # type: ignore[union-attr]
    with pytest.raises(CircuitOpen) as exc:
        await flt(ctx(srv))
    assert exc.value.status == 503 and exc.value.headers["Retry-After"] == "5"
    assert bal.outstanding("s", A) == 0


async def test_shadow_records_and_admits() -> None:
    flt, registry, _, srv, clock, _ = setup(mode="shadow")
    for _ in range(2):
        await send(flt, srv, None, "connect")
    assert registry.peek("s", A).state is State.OPEN  # type: ignore[union-attr]
    c = ctx(srv)
    await flt(c)
    assert c.upstream_url == A
    assert [(d.stage, d.reason) for d in c.shadow] == [("breaker", "circuit_open")]
    # the shadow breaker still recovers through its probe
    clock.advance(6)
    await send(flt, srv, 200)
    assert registry.peek("s", A).state is State.CLOSED  # type: ignore[union-attr]


async def test_probe_that_never_reports_gives_its_slot_back() -> None:
    flt, registry, _, srv, clock, _ = setup()
    for _ in range(2):
        await send(flt, srv, 500)
    clock.advance(6)
    lost = ctx(srv)
    await flt(lost)  # the probe slot is taken ...
    with pytest.raises(CircuitOpen):
        await flt(ctx(srv))
    finish(lost)  # ... and returned when the request ends without an outcome (client left)
    await send(flt, srv, 200)
    assert registry.peek("s", A).state is State.CLOSED  # type: ignore[union-attr]


async def test_pool_waits_are_not_upstream_failures() -> None:
    flt, registry, _, srv, clock, _ = setup()
    for _ in range(5):
        c = ctx(srv)
        await flt(c)
        # the gateway's own cap, however long it waited (far beyond slow_call_seconds)
        c.report_outcome(UpstreamOutcome(A, None, "pool", 1000.0))
        finish(c)
    assert registry.peek("s", A).state is State.CLOSED  # type: ignore[union-attr]
    for _ in range(2):
        await send(flt, srv, 500)
    clock.advance(6)
    probe = ctx(srv)
    await flt(probe)
    assert probe.upstream_url == A
    # a half-open probe that only waited for the pool gives its slot back untested: the next call probes
    probe.report_outcome(UpstreamOutcome(A, None, "pool", 0.3))
    finish(probe)
    assert registry.peek("s", A).state is State.HALF_OPEN  # type: ignore[union-attr]
    await send(flt, srv, 200)
    assert registry.peek("s", A).state is State.CLOSED  # type: ignore[union-attr]


async def test_busy_half_open_instance_is_skipped_for_another() -> None:
    flt, registry, _, srv, clock, _ = setup((A, B))
    br_a = registry.get("s", A, srv.breaker)
    br_a.trip("test", clock())
    clock.advance(6)
    probe = ctx(srv)
    probe.upstream_url = A  # as if the balancer had chosen A
    await flt(probe)
    assert probe.upstream_url == A and br_a.state is State.HALF_OPEN
    other = ctx(srv)
    other.upstream_url = A
    await flt(other)
    assert other.upstream_url == B  # rerouted instead of refused


async def test_a_session_stays_on_its_instance_even_when_it_is_open() -> None:
    flt, registry, _, srv, clock, sessions = setup((A, B))
    principal = Principal(tenant="acme", subject="u", role="user", scopes=frozenset({"read"}), key_id="k")
    await sessions.put("s", "sess1", SessionBinding(principal.binding_id, "s", A))
    registry.get("s", A, srv.breaker).trip("test", clock())
    c = ctx(srv, session="sess1")
    c.principal = principal
    with pytest.raises(CircuitOpen):
        await flt(c)
    assert c.upstream_url == A
