"""The HTTP forwarder with safe retries under a retry budget.

What is retried (MCP-NOTES section 7), at most `retry.attempts` extra times:
  * a request that never reached the upstream (connect error or timeout): any method, even `tools/call`, because
    nothing was delivered. Without a session it goes to another instance when there is one (balancer, skipping the
    instance that failed); a session stays on its instance.
  * a request that got no pooled connection within the pool's max wait: only to another instance (no session,
    several upstreams); the same instance again would just wait as long a second time.
  * a read-only request (list/get/read/ping/...; `tools/call` only for tools in `retry.idempotent_tools`) whose
    connection was reset or that got 502/503/504.
Never retried: answer timeouts (the upstream may still be working on it, and a retry would double the wait for a hung
upstream), `initialize` after delivery, notifications and client responses after delivery, and anything once
the answer has started streaming.

Retries per server are capped by a budget: over a sliding 10 s window, retries <= budget_ratio * requests +
budget_min_retries. Under load this bounds the extra traffic to `budget_ratio` (20% by default), so retries
cannot multiply an overload.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from gateway.auth.scopes import READ_METHODS
from gateway.context import RequestContext, UpstreamOutcome
from gateway.errors import GatewayError, UpstreamUnavailable
from gateway.jsonrpc import Kind
from gateway.policy.resilience import RetryPolicy
from gateway.policy.servers import ServerPolicy
from gateway.settings import UpstreamClient
from gateway.upstream.http import HttpForwarder
from gateway.upstream.pool import UpstreamPools
from gateway.upstream.response import UpstreamResponse

# read-only methods that are safe to send twice; initialize is left out (a delivered one may have made a session)
RETRY_SAFE_METHODS = frozenset(READ_METHODS - {"initialize"})
RETRY_STATUSES = frozenset({502, 503, 504})
BUDGET_WINDOW_SECONDS = 10


class RetryMetrics(Protocol):
    def retried(self, server: str, reason: str) -> None: ...

    def budget_exhausted(self, server: str) -> None: ...


class RetryBudget:
    """Requests and retries counted in one-second buckets over a sliding window."""

    def __init__(self, window: int = BUDGET_WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._requests = [0] * window
        self._retries = [0] * window
        self._stamp = [0] * window

    def _slot(self) -> int:
        sec = int(self._clock())
        i = sec % self._window
        if self._stamp[i] != sec:
            self._stamp[i] = sec
            self._requests[i] = 0
            self._retries[i] = 0
        return i

    def _totals(self) -> tuple[int, int]:
        floor = int(self._clock()) - self._window
        req = ret = 0
        for i in range(self._window):
            if self._stamp[i] > floor:
                req += self._requests[i]
                ret += self._retries[i]
        return req, ret

    def note_request(self) -> None:
        self._requests[self._slot()] += 1

    def try_spend(self, policy: RetryPolicy) -> bool:
        i = self._slot()
        requests, retries = self._totals()
        if retries + 1 > policy.budget_ratio * requests + policy.budget_min_retries:
            return False
        self._retries[i] += 1
        return True


# (server name, server policy, instances to avoid) -> another instance URL, or raises GatewayError if none
Repicker = Callable[[str, ServerPolicy, Iterable[str]], str]
# (server name, url) -> end function of the outstanding-request count on that instance
Tracker = Callable[[str, str], Callable[[], None]]


def retry_reason(ctx: RequestContext, server: ServerPolicy, outcome: UpstreamOutcome) -> str | None:
    """Why this failed attempt may be sent again, or None when it must not be."""
    if outcome.error == "connect":
        return "not_delivered"
    if outcome.error == "pool":
        # the wait for a pooled connection already took its full max_wait: the same instance again would only
        # double it, another instance (a request without a session, several upstreams) may have room
        if ctx.session_id is None and len(server.upstreams) > 1:
            return "pool_wait"
        return None
    if not (outcome.error == "reset" or (outcome.error is None and outcome.status in RETRY_STATUSES)):
        return None
    if ctx.http_method == "GET":
        return "read_only"
    if ctx.http_method != "POST" or not ctx.envelopes:
        return None
    idempotent = server.retry.idempotent_tools
    for env in ctx.envelopes:
        if env.kind is not Kind.REQUEST or env.method is None:
            return None
        if env.method in RETRY_SAFE_METHODS:
            continue
        if env.method == "tools/call" and env.tool is not None and env.tool in idempotent:
            continue
        return None
    return "read_only"


class ResilientForwarder(HttpForwarder):
    def __init__(
        self,
        pools: UpstreamPools,
        keepalive_seconds: float,
        repick: Repicker | None = None,
        track: Tracker | None = None,
        metrics: RetryMetrics | None = None,
        client: UpstreamClient = "lean",
    ) -> None:
        super().__init__(pools, keepalive_seconds, client)
        self._repick = repick
        self._track = track
        self._metrics = metrics
        self._budgets: dict[str, RetryBudget] = {}

    def budget(self, server_name: str) -> RetryBudget:
        b = self._budgets.get(server_name)
        if b is None:
            b = self._budgets[server_name] = RetryBudget()
        return b

    async def open(
        self,
        ctx: RequestContext,
        server: ServerPolicy,
        url: str,
        method: str,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> UpstreamResponse:
        extra = tuple(extra_headers)
        budget = self.budget(ctx.server_name)
        budget.note_request()
        tried: list[str] = []
        attempt = 0
        while True:
            hooks = list(ctx.outcome_hooks)
            seen: list[UpstreamOutcome] = []
            ctx.outcome_hooks.append(seen.append)
            held = len(ctx.releases)
            try:
                resp = await super().open(ctx, server, url, method, extra)
            except UpstreamUnavailable:
                if not await self._again(ctx, server, seen, attempt, budget):
                    raise
            else:
                if resp.status not in RETRY_STATUSES or not await self._again(ctx, server, seen, attempt, budget):
                    return resp
                resp.close()
                # what the discarded attempt holds (its stream slot) is given back before the next one takes its own
                while len(ctx.releases) > held:
                    ctx.releases.pop()()
            # the next attempt reports its own outcome to the same hooks (the breaker stage's among them)
            ctx.outcome_hooks = hooks
            tried.append(url)
            url = self._next_url(ctx, server, url, tried)
            attempt += 1

    async def _again(
        self,
        ctx: RequestContext,
        server: ServerPolicy,
        seen: list[UpstreamOutcome],
        attempt: int,
        budget: RetryBudget,
    ) -> bool:
        if attempt >= server.retry.attempts or not seen:
            return False
        reason = retry_reason(ctx, server, seen[-1])
        if reason is None:
            return False
        if not budget.try_spend(server.retry):
            if self._metrics is not None:
                self._metrics.budget_exhausted(ctx.server_name)
            return False
        if self._metrics is not None:
            self._metrics.retried(ctx.server_name, reason)
        ctx.notes["retries"] = attempt + 1
        if server.retry.backoff_seconds > 0:
            await asyncio.sleep(server.retry.backoff_seconds * (2**attempt))
        return True

    def _next_url(self, ctx: RequestContext, server: ServerPolicy, url: str, tried: list[str]) -> str:
        """Another instance for a request without a session; otherwise the same one."""
        if ctx.session_id is not None or self._repick is None or len(server.upstreams) < 2:
            return url
        try:
            new = self._repick(ctx.server_name, server, tried)
        except GatewayError:
            return url
        if new != url:
            ctx.upstream_url = new  # the session an initialize creates is bound to the instance that answered
            if self._track is not None:
                ctx.releases.append(self._track(ctx.server_name, new))
        return new
