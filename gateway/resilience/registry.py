"""All breakers of this process, keyed by server name + instance URL (runtime state: a reload keeps them).

The registry is where local transitions fan out: to metrics, to the log and (unless the transition was itself
adopted from another replica) to the shared store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import structlog

from gateway.policy.resilience import BreakerPolicy
from gateway.policy.snapshot import Snapshot
from gateway.redact import display_url
from gateway.resilience.shared import RedisBreakerStore
from gateway.resilience.state import CircuitBreaker, Transition

log = structlog.get_logger("gateway.resilience")


def breaker_key(server: str, url: str) -> str:
    return f"{server}|{url}"


class BreakerRegistry:
    def __init__(
        self,
        on_transition: Callable[[str, str, Transition], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._by_key: dict[str, CircuitBreaker] = {}
        self._names: dict[str, tuple[str, str]] = {}
        self._on_transition = on_transition
        self.clock = clock
        self.shared: RedisBreakerStore | None = None

    def get(self, server: str, url: str, policy: BreakerPolicy) -> CircuitBreaker:
        key = breaker_key(server, url)
        br = self._by_key.get(key)
        if br is None:
            br = CircuitBreaker(key, policy, self._transitioned)
            self._by_key[key] = br
            self._names[key] = (server, url)
        elif br.policy is not policy:
            br.update_policy(policy)
        return br

    def find(self, key: str) -> CircuitBreaker | None:
        return self._by_key.get(key)

    def peek(self, server: str, url: str) -> CircuitBreaker | None:
        return self._by_key.get(breaker_key(server, url))

    def items(self) -> Iterator[tuple[str, str, CircuitBreaker]]:
        for key, br in list(self._by_key.items()):
            server, url = self._names[key]
            yield server, url, br

    def sync(self, snapshot: Snapshot) -> None:
        """Create breakers for every instance of the new snapshot (so shared events find them), drop the rest."""
        wanted: set[str] = set()
        for name, server in snapshot.servers.items():
            for up in server.upstreams:
                self.get(name, up.url, server.breaker)
                wanted.add(breaker_key(name, up.url))
        for key in list(self._by_key):
            if key not in wanted:
                del self._by_key[key]
                del self._names[key]

    def _transitioned(self, tr: Transition) -> None:
        server, url = self._names.get(tr.key, ("?", "?"))
        shared = self.shared
        remote = shared is not None and shared.adopting
        log.info(
            "breaker transition",
            server=server,
            upstream=display_url(url),
            old=tr.old.value,
            new=tr.new.value,
            reason=tr.reason,
            generation=tr.gen,
            open_seconds=round(tr.open_seconds, 3),
            source="shared" if remote else "local",
        )
        if self._on_transition is not None:
            self._on_transition(server, url, tr)
        if shared is not None and not remote:
            br = self._by_key.get(tr.key)
            if br is not None:
                shared.push(br, tr)
