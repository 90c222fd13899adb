"""The fixed filter chain: the order of the stages, in one place, with the reason for each position.

    1. client_guard  IP block list and per-IP flood limit. First because it is the cheapest refusal and must run
                     before any parsing or backend round trip (a blocked IP costs us almost nothing).
    2. authn         API key or JWT -> Principal. Everything after needs to know who is calling; the tenant comes
                     only from here (never from a header or query parameter).
    3. authz         tenant may reach this server, scope allows the method, tool allowed. Before limits so a
                     request we would refuse anyway does not consume anybody's quota.
    4. ratelimit     every tier decided in one store call. After authz (above) and before the breaker so a flood
                     is refused without touching breaker state.
    5. breaker       the upstream's circuit; open -> refuse without a connection attempt. Last before forward
                     because only requests that will really be sent should count as breaker traffic.
    6. forward       terminal: streams the upstream's answer and reports the outcome to the breaker.

Audit and metrics observe every request in `finally`, so refusals at any stage are recorded too. The order is
not configurable. On WebSocket, stages 1-2 run once at the upgrade and 3-5 for every message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

import structlog

from gateway.context import RequestContext
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.policy.snapshot import Snapshot

log = structlog.get_logger("gateway.chain")

T = TypeVar("T")

STAGES: tuple[str, ...] = ("client_guard", "authn", "authz", "ratelimit", "breaker")
_GUARD: tuple[str, ...] = STAGES[:1]
CONNECT_STAGES: tuple[str, ...] = ("client_guard", "authn")
MESSAGE_STAGES: tuple[str, ...] = ("authz", "ratelimit", "breaker")
FORWARD_STAGE = "forward"


class Filter(Protocol):
    """A stage: returns to let the request go on (optionally adding `ctx.response_headers`) or raises."""

    stage: str

    async def __call__(self, ctx: RequestContext) -> None: ...


class Observer(Protocol):
    """Sees every finished request (audit, metrics, IP strikes). Must not block: enqueue, never await I/O."""

    def observe(self, ctx: RequestContext) -> None: ...


@dataclass(frozen=True, slots=True)
class Chain:
    snapshot: Snapshot
    filters: tuple[Filter, ...]
    observers: tuple[Observer, ...] = ()
    # the filters of each `stages` selection, in chain order: a few fixed selections, each worked out once
    _selected: dict[tuple[str, ...], tuple[Filter, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def _select(self, stages: tuple[str, ...]) -> tuple[Filter, ...]:
        selected = self._selected.get(stages)
        if selected is None:
            selected = self._selected[stages] = tuple(flt for flt in self.filters if flt.stage in stages)
        return selected

    async def admit(self, ctx: RequestContext, stages: tuple[str, ...] = STAGES) -> None:
        """Run the pre-forward stages named in `stages` (in the fixed order)."""
        for flt in self._select(stages):
            try:
                await flt(ctx)
            except GatewayError as err:
                if err.stage is None:
                    err.stage = flt.stage
                raise

    async def run(
        self,
        ctx: RequestContext,
        forward: Callable[[RequestContext], Awaitable[T]],
        *,
        prepare: Callable[[RequestContext], Awaitable[None]] | None = None,
        stages: tuple[str, ...] = STAGES,
    ) -> T:
        """Admit, then forward; record the outcome whatever happens. GatewayErrors propagate to the transport,
        which renders them in its own way (HTTP answer, SSE event, WebSocket frame).

        `prepare` (reading and parsing the body) runs right after client_guard: the guard must refuse before any
        parsing, and every later stage needs the parsed envelope.
        """
        # every log line written while this request runs (filters, forwarder) carries its id; each aiohttp
        # handler is its own task, so the binding cannot leak into another request
        structlog.contextvars.bind_contextvars(request_id=ctx.request_id)
        try:
            if prepare is not None and stages and stages[0] == "client_guard":
                await self.admit(ctx, _GUARD)
                try:
                    await prepare(ctx)
                except GatewayError as err:
                    err.stage = err.stage or "parse"
                    raise
                await self.admit(ctx, stages[1:])
            else:
                if prepare is not None:
                    await prepare(ctx)
                await self.admit(ctx, stages)
            return await forward(ctx)
        except GatewayError as err:
            note_refusal(ctx, err)
            raise
        except asyncio.CancelledError:
            # the client went away; 499 is the conventional "client closed request" for logs and audit
            if ctx.http_status is None:
                ctx.http_status = 499
                ctx.refused_reason = ctx.refused_reason or "client_disconnected"
            raise
        except Exception:
            if ctx.http_status is None:
                ctx.http_status = 500
            ctx.refused_stage = ctx.refused_stage or FORWARD_STAGE
            ctx.refused_reason = ctx.refused_reason or "internal_error"
            log.exception("unhandled error in chain", request_id=ctx.request_id)
            raise
        finally:
            self.finish(ctx)

    def finish(self, ctx: RequestContext) -> None:
        while ctx.releases:
            release = ctx.releases.pop()
            try:
                release()
            except Exception:  # a failing release must not hide the request's outcome
                log.exception("release failed", request_id=ctx.request_id)
        for obs in self.observers:
            try:
                obs.observe(ctx)
            except Exception:
                log.exception("observer failed", observer=type(obs).__name__, request_id=ctx.request_id)


def note_refusal(ctx: RequestContext, err: GatewayError) -> None:
    ctx.refused_stage = err.stage or ctx.refused_stage or FORWARD_STAGE
    ctx.refused_reason = err.reason
    ctx.rpc_error_code = err.code
    if ctx.http_status is None:
        ctx.http_status = err.status


def build_chain(snapshot: Snapshot, app: web.Application) -> Chain:
    """Build every filter from the compiled snapshot. Called once per reload, never per request."""
    from gateway.filters import authn, authz, breaker, client_guard, ratelimit
    from gateway.observers import collect_observers

    filters: tuple[Filter, ...] = (
        client_guard.build(snapshot, app),
        authn.build(snapshot, app),
        authz.build(snapshot, app),
        ratelimit.build(snapshot, app),
        breaker.build(snapshot, app),
    )
    for flt, expected in zip(filters, STAGES, strict=True):
        # a real check, not `assert`: the order is a security property and must hold under `python -O` too
        if flt.stage != expected:
            raise RuntimeError(f"chain order broken: {flt.stage} where {expected} belongs")
    return Chain(snapshot, filters, collect_observers(app))
