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
not configurable. On WebSocket, stages 1-3 run once at the upgrade (authz there: may the tenant reach the server at
all, decided before the upstream socket is opened) and 3-5 for every message.

Reading the body (a POST's `prepare`) comes after client_guard, or after authn when the transport says reading it
would mean waiting for a large body (gateway/transports/common.py `authn_before_body`): a caller without a valid
credential is not waited for while it sends one (issue #14).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

import structlog

from gateway.context import CONNECT_STAGES, FORWARD_STAGE, MESSAGE_STAGES, SESSION_STAGE, STAGES, RequestContext
from gateway.errors import GatewayError
from gateway.transports.refusal_status import status_200

if TYPE_CHECKING:
    from gateway.policy.snapshot import Snapshot
    from gateway.tracing.spans import Tracing

# the stage names are re-exported here for the transports, which name them beside `Chain`
__all__ = [
    "CONNECT_STAGES",
    "FORWARD_STAGE",
    "MESSAGE_STAGES",
    "SESSION_STAGE",
    "STAGES",
    "Chain",
    "Filter",
    "Observer",
    "note_refusal",
]

log = structlog.get_logger("gateway.chain")

T = TypeVar("T")

_GUARD: tuple[str, ...] = STAGES[:1]
# what runs before the body is read when the transport asks for authn first (see `run`)
_AUTHN_FIRST: tuple[str, ...] = STAGES[:2]


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
    # OpenTelemetry (gateway/tracing/); None when tracing is off. Its observer is among `observers`
    tracing: Tracing | None = None
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
        trace = ctx.trace
        for flt in self._select(stages):
            try:
                await (flt(ctx) if trace is None else trace.stage(flt, ctx))
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
        authn_first: bool = False,
    ) -> T:
        """Admit, then forward; record the outcome whatever happens. GatewayErrors propagate to the transport,
        which renders them in its own way (HTTP answer, SSE event, WebSocket frame).

        `prepare` (reading and parsing the body) runs right after client_guard: the guard must refuse before any
        parsing, and every later stage needs the parsed envelope. With `authn_first` it runs after authn
        instead, so an unauthenticated caller is refused from its head alone (its refusal then cannot echo the
        JSON-RPC id).
        """
        # every log line written while this request runs (filters, forwarder) carries its id; each aiohttp
        # handler is its own task, so the binding cannot leak into another request
        structlog.contextvars.bind_contextvars(request_id=ctx.request_id)
        if self.tracing is not None:
            self.begin_trace(ctx)
        try:
            if prepare is not None and stages and stages[0] == "client_guard":
                early = _AUTHN_FIRST if authn_first and stages[:2] == _AUTHN_FIRST else _GUARD
                await self.admit(ctx, early)
                try:
                    await prepare(ctx)
                except GatewayError as err:
                    err.stage = err.stage or "parse"
                    raise
                await self.admit(ctx, stages[len(early) :])
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

    def begin_trace(self, ctx: RequestContext) -> None:
        """Start the request's trace (tracing on): `run` does; a transport admitting stage by stage (a WebSocket
        upgrade) calls it first, so its stages and its upstream connection are traced too."""
        if self.tracing is not None and ctx.trace is None:
            self.tracing.begin(ctx)

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
        if ctx.http_method == "POST" and status_200(ctx, ctx.server, err):
            # the record keeps the refusal's own status; what the client saw on the wire is noted beside it
            # (an operator matching the audit against a load balancer's log finds the 200 there)
            ctx.notes["sent_status"] = 200
