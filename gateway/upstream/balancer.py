"""Load balancing across a server's upstream instances: smooth weighted round-robin or least-outstanding.

Only requests without a session are balanced (a session stays on the instance that issued it; see routing.py).
Instances the health check marks unhealthy, and instances whose breaker is open, are skipped. When nothing is
left the request is refused with 503 at once: CircuitOpen if open breakers are the reason (Retry-After = the
soonest end of an open period), ServiceUnavailable `no_healthy_upstream` otherwise.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from gateway.context import RequestContext
from gateway.errors import CircuitOpen, ServiceUnavailable
from gateway.policy.servers import ServerPolicy

# (server, url) -> is the instance usable according to its health check
HealthLookup = Callable[[str, str], bool]
# (server, url) -> seconds until its breaker admits calls again (0 = admits now)
BreakerWait = Callable[[str, str], float]


@dataclass(slots=True)
class _Rotation:
    """Smooth weighted round-robin (as in nginx): even spread, each instance picked in proportion to its weight."""

    urls: tuple[str, ...]
    weights: tuple[int, ...]
    current: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.current = [0] * len(self.urls)

    def next(self, usable: list[bool]) -> int:
        total = 0
        best = -1
        cur = self.current
        for i, w in enumerate(self.weights):
            if not usable[i]:
                continue
            cur[i] += w
            total += w
            if best < 0 or cur[i] > cur[best]:
                best = i
        cur[best] -= total
        return best


class Balancer:
    def __init__(self, healthy: HealthLookup, breaker_wait: BreakerWait) -> None:
        self._healthy = healthy
        self._breaker_wait = breaker_wait
        self._rotations: dict[str, _Rotation] = {}
        self._outstanding: dict[tuple[str, str], int] = {}
        self._tiebreak = itertools.count()

    # ------------------------------------------------------------------ picking

    def pick(self, ctx: RequestContext, server: ServerPolicy) -> str:
        """A sessionless request's instance (`UpstreamChoice.choose`, gateway/upstream/choice.py): raises a 503
        GatewayError when no instance can take the request."""
        url = self.choose(ctx.server_name, server)
        return url

    def choose(self, name: str, server: ServerPolicy, exclude: Collection[str] = ()) -> str:
        ups = server.upstreams
        usable: list[bool] = []
        soonest: float | None = None
        any_healthy = False
        for up in ups:
            if up.url in exclude or not self._healthy(name, up.url):
                usable.append(False)
                continue
            any_healthy = True
            wait = self._breaker_wait(name, up.url)
            if wait > 0:
                soonest = wait if soonest is None else min(soonest, wait)
                usable.append(False)
            else:
                usable.append(True)
        if not any(usable):
            if any_healthy and soonest is not None:
                raise CircuitOpen(
                    "upstream circuit open: not sending requests for now", retry_after=soonest, stage="breaker"
                )
            raise ServiceUnavailable(
                "no healthy upstream instance",
                reason="no_healthy_upstream",
                retry_after=server.health.interval,
                stage="breaker",
            )
        if server.load_balancing == "least-outstanding":
            return ups[self._least_outstanding(name, server, usable)].url
        return ups[self._rotation(name, server).next(usable)].url

    def _rotation(self, name: str, server: ServerPolicy) -> _Rotation:
        urls = tuple(u.url for u in server.upstreams)
        rot = self._rotations.get(name)
        if rot is None or rot.urls != urls or rot.weights != tuple(u.weight for u in server.upstreams):
            rot = _Rotation(urls, tuple(u.weight for u in server.upstreams))
            self._rotations[name] = rot
        return rot

    def _least_outstanding(self, name: str, server: ServerPolicy, usable: list[bool]) -> int:
        # load per unit of weight; ties rotate so equal instances share the traffic
        best = -1
        best_load = 0.0
        ups = server.upstreams
        start = next(self._tiebreak) % len(ups)
        for k in range(len(ups)):
            i = (start + k) % len(ups)
            if not usable[i]:
                continue
            load = self._outstanding.get((name, ups[i].url), 0) / ups[i].weight
            if best < 0 or load < best_load:
                best, best_load = i, load
        return best

    # ------------------------------------------------------------------ outstanding requests

    def begin(self, name: str, url: str) -> Callable[[], None]:
        """Count a request in flight on an instance; call the returned function exactly once when it ends."""
        key = (name, url)
        self._outstanding[key] = self._outstanding.get(key, 0) + 1
        done = False

        def end() -> None:
            nonlocal done
            if done:
                return
            done = True
            left = self._outstanding.get(key, 1) - 1
            if left > 0:
                self._outstanding[key] = left
            else:
                self._outstanding.pop(key, None)

        return end

    def outstanding(self, name: str, url: str) -> int:
        return self._outstanding.get((name, url), 0)
