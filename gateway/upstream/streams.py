"""Long-lived streams to an upstream: which requests are streams, and each upstream origin's stream budget with
fair admission among tenants.

A GET event stream (Streamable HTTP's standalone stream, a legacy SSE stream) or a 2026 `subscriptions/listen` POST
holds its upstream connection for as long as the client keeps it open, idle or not. In the pool of request/response
traffic, 100 idle streams of one key made every other tenant's calls wait and fail with `upstream_pool_exhausted`
(issue 15). So streams are sent over a pool of their own per upstream origin (`pool.max_streams`), and this budget
decides who may open one:

* while a slot is free, anyone may (the ratelimit stage's per-key and per-tenant caps bound each caller);
* when the budget is full it is shared equally among the tenants holding streams on it, the asking tenant included:
  fair share = max_streams // tenants. A tenant at or over its share is refused (429 `stream_share_exceeded`). A
  tenant under it gets the slot of the newest stream of the tenant holding the most, which is ended cleanly (the
  client sees its event stream end; when it reconnects it is refused while the budget stays contended).

When the budget is full and a tenant is under its share, another tenant is over its own (the shares add up to at
most the budget), so a tenant under its share is never refused: one tenant cannot keep the others out, however many
streams it opened first. Like the pools, a budget is per gateway process; the caps are what is shared across
replicas.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.context import RequestContext

LISTEN_METHOD = "subscriptions/listen"


def is_stream(ctx: RequestContext) -> bool:
    """A request whose answer stays open until someone ends it: a GET event stream or a 2026 listen POST."""
    method = ctx.http_method
    if method == "GET":
        return True
    msg = ctx.message
    if msg is None or method != "POST":
        return False
    envs = msg.envelopes
    return len(envs) == 1 and envs[0].method == LISTEN_METHOD


class StreamEvents(Protocol):
    """Metrics of the budgets (called only on refusals and evictions, never on an admission)."""

    def stream_refused(self, origin: str) -> None: ...

    def stream_evicted(self, origin: str) -> None: ...


class StreamShareExceeded(Exception):
    """The budget is full and the tenant already holds its fair share of it."""

    def __init__(self, share: int, held: int) -> None:
        super().__init__(f"stream budget full; tenant holds {held} of a fair share of {share}")
        self.share = share
        self.held = held


class StreamLease:
    """One admitted stream's slot. `release()` gives it back (idempotent); an eviction takes it away first and calls
    what `bind()` registered to end the stream."""

    __slots__ = ("_budget", "_on_evict", "evicted", "released", "tenant")

    def __init__(self, budget: StreamBudget, tenant: str) -> None:
        self._budget = budget
        self.tenant = tenant
        self.evicted = False
        self.released = False
        self._on_evict: Callable[[], None] | None = None

    @property
    def bound(self) -> bool:
        return self._on_evict is not None

    def bind(self, on_evict: Callable[[], None]) -> None:
        """The stream is open: `on_evict` ends it if its slot is taken for a tenant under its share."""
        self._on_evict = on_evict

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self._on_evict = None
        if not self.evicted:
            self._budget._drop(self)

    def _evict(self) -> None:
        self.evicted = True
        end, self._on_evict = self._on_evict, None
        if end is not None:
            end()


class StreamBudget:
    """Open streams to one upstream origin, per tenant, under `limit`."""

    def __init__(self, origin: str, limit: int, events: StreamEvents | None = None) -> None:
        self.origin = origin
        self.limit = limit
        self.events = events
        # tenant -> its leases, oldest first (a dict as an ordered set: O(1) removal, newest = last)
        self._held: dict[str, dict[StreamLease, None]] = {}
        self.open = 0

    def held(self, tenant: str) -> int:
        leases = self._held.get(tenant)
        return len(leases) if leases is not None else 0

    @property
    def tenants(self) -> int:
        return len(self._held)

    def fair_share(self, tenant: str) -> int:
        """The tenant's equal part of the budget among the tenants holding streams on it, the tenant included."""
        k = len(self._held) + (0 if tenant in self._held else 1)
        return self.limit // k

    def admit(self, tenant: str) -> StreamLease:
        """A slot for a new stream of `tenant`, or StreamShareExceeded. May end another tenant's stream (see the
        module's docstring)."""
        if self.open >= self.limit:
            share = self.fair_share(tenant)
            held = self.held(tenant)
            if held + 1 > share:
                if self.events is not None:
                    self.events.stream_refused(self.origin)
                raise StreamShareExceeded(share, held)
            self._evict_one(tenant)
        lease = StreamLease(self, tenant)
        leases = self._held.get(tenant)
        if leases is None:
            leases = self._held[tenant] = {}
        leases[lease] = None
        self.open += 1
        return lease

    def _evict_one(self, tenant: str) -> None:
        victim = max((t for t in self._held if t != tenant), key=lambda t: len(self._held[t]))
        leases = self._held[victim]
        # the newest open stream: the one its tenant opened last, beyond what it had; a stream still opening (no
        # answer yet to end) only when the victim has nothing else
        chosen = next((lease for lease in reversed(leases) if lease.bound), None)
        if chosen is None:
            chosen = next(reversed(leases))
        self._forget(chosen)
        if self.events is not None:
            self.events.stream_evicted(self.origin)
        chosen._evict()

    def _drop(self, lease: StreamLease) -> None:
        leases = self._held.get(lease.tenant)
        if leases is not None and lease in leases:
            self._forget(lease)

    def _forget(self, lease: StreamLease) -> None:
        leases = self._held[lease.tenant]
        del leases[lease]
        if not leases:
            del self._held[lease.tenant]
        self.open -= 1
