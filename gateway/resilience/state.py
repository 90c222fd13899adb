"""The circuit breaker of one upstream instance: closed / open / half-open, as a plain synchronous state machine.

No I/O and no awaits here: the request path asks `admit()` (a few attribute reads in the closed state) and the
forward stage reports `record()`. Time is passed in (monotonic seconds) so the logic is testable without sleeping.

Every transition bumps `gen`. An outcome carries the generation it was admitted in; outcomes from an older
generation are ignored, so a slow call admitted before a trip cannot close a circuit that opened after it. The
generation is also what replicas compare when they share state through Redis (higher generation wins).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from gateway.policy.resilience import BreakerPolicy


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


STATE_VALUE = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}


@dataclass(frozen=True, slots=True)
class Admission:
    """What `admit` decided. `probe` admissions must report (or be released) so the half-open round can end."""

    allowed: bool
    gen: int
    probe: bool = False
    retry_after: float = 0.0
    # the breaker wants a cross-replica decision (open period over, or half-open): ask the shared store
    coordinate: bool = False


@dataclass(frozen=True, slots=True)
class Transition:
    key: str
    old: State
    new: State
    gen: int
    reason: str
    open_seconds: float  # the open period just started (0 unless new is OPEN)
    trips: int


def is_failure(policy: BreakerPolicy, status: int | None, error: str | None) -> bool:
    """Connect errors, resets, timeouts and protocol breakage fail; so do the configured statuses (5xx by default).
    4xx answers and JSON-RPC errors inside a 2xx answer are the server working as designed."""
    if error is not None:
        return True
    if status is None:
        return True
    if policy.failure_statuses == "5xx":
        return status >= 500
    return status in policy.failure_statuses


def open_period(policy: BreakerPolicy, trips: int) -> float:
    """Open time of the `trips`-th consecutive trip (1-based): base * multiplier^(trips-1), capped."""
    exp = max(0, trips - 1)
    # cap the exponent before the power so a long outage cannot overflow a float
    value = policy.open_seconds * (policy.backoff_multiplier ** min(exp, 64))
    return min(value, policy.max_open_seconds)


class CircuitBreaker:
    def __init__(
        self,
        key: str,
        policy: BreakerPolicy,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self.key = key
        self.policy = policy
        self.state = State.CLOSED
        self.gen = 0
        self.trips = 0  # consecutive trips without a successful close (drives the open-time backoff)
        self.open_until = 0.0
        self.last_trip_reason: str | None = None
        # what the last real call saw (for /admin/servers); written by the forward stage's outcome hook
        self.last_latency: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # wall-clock
        self._window: deque[tuple[bool, bool]] = deque(maxlen=policy.window)
        self._failures = 0  # failures in the window (kept incrementally: no scan per call)
        self._slow = 0
        self._consecutive = 0
        self._probes_admitted = 0
        self._probe_successes = 0
        self._half_open_since = 0.0
        self._on_transition = on_transition

    # ------------------------------------------------------------------ configuration

    def update_policy(self, policy: BreakerPolicy) -> None:
        """A reload changed the numbers: keep the state, resize the window."""
        same = policy == self.policy
        self.policy = policy  # keep the new object: the request path compares by identity
        if same:
            return
        if self._window.maxlen != policy.window:
            self._window = deque(self._window, maxlen=policy.window)
            self._failures = sum(1 for f, _ in self._window if f)
            self._slow = sum(1 for _, s in self._window if s)

    # ------------------------------------------------------------------ admission

    def admit(self, now: float, shared: bool = False) -> Admission:
        state = self.state
        if state is State.CLOSED:
            return Admission(True, self.gen)
        if state is State.OPEN and now < self.open_until:
            return Admission(False, self.gen, retry_after=self.open_until - now)
        if shared:
            return Admission(False, self.gen, coordinate=True)
        return self.admit_probe_locally(now)

    def admit_probe_locally(self, now: float) -> Admission:
        """Half-open decision when this replica decides alone (no Redis, or Redis is down)."""
        if self.state is State.OPEN:
            self._transition(State.HALF_OPEN, "open_elapsed", now)
        elif now - self._half_open_since >= self.policy.probe_timeout_seconds:
            # probes admitted long ago never reported (lost): start a new round rather than stay stuck
            self._transition(State.HALF_OPEN, "probe_timeout", now)
        if self._probes_admitted < self.policy.half_open_probes:
            self._probes_admitted += 1
            return Admission(True, self.gen, probe=True)
        return Admission(False, self.gen, retry_after=self._probe_wait())

    def _probe_wait(self) -> float:
        return max(1.0, min(self.policy.slow_call_seconds, self.policy.open_seconds))

    def release_probe(self, gen: int) -> None:
        """A probe that never reached the upstream (client left, refused later): give its slot back."""
        if gen == self.gen and self.state is State.HALF_OPEN and self._probes_admitted > 0:
            self._probes_admitted -= 1

    # ------------------------------------------------------------------ outcomes

    def record(self, gen: int, probe: bool, failed: bool, slow: bool, now: float) -> None:
        if gen != self.gen:
            return  # admitted under an earlier state: says nothing about this one
        if self.state is State.CLOSED:
            self._record_closed(failed, slow, now)
        elif self.state is State.HALF_OPEN and probe:
            if failed or slow:
                self._trip("probe_failed", now)
            else:
                self._probe_successes += 1
                if self._probe_successes >= self.policy.half_open_probes:
                    self._transition(State.CLOSED, "probes_succeeded", now)

    def _record_closed(self, failed: bool, slow: bool, now: float) -> None:
        window = self._window
        if len(window) == window.maxlen:
            old_failed, old_slow = window[0]
            self._failures -= old_failed
            self._slow -= old_slow
        window.append((failed, slow))
        self._failures += failed
        self._slow += slow
        self._consecutive = self._consecutive + 1 if failed else 0
        p = self.policy
        if self._consecutive >= p.consecutive_failures:
            self._trip("consecutive_failures", now)
            return
        n = len(window)
        if n < p.min_calls:
            return
        # slow first: a hung upstream both times out (failure) and is slow; naming it slow says more
        if self._slow / n >= p.slow_call_rate:
            self._trip("slow_call_rate", now)
        elif self._failures / n >= p.failure_rate:
            self._trip("failure_rate", now)

    def trip(self, reason: str, now: float) -> None:
        """Open from outside the call path (a failed health check). No-op when already open."""
        if self.state is not State.OPEN:
            self._trip(reason, now)

    def expedite(self, now: float) -> None:
        """The instance looks healthy again: let the next request probe instead of waiting out the open period."""
        if self.state is State.OPEN and self.open_until > now:
            self.open_until = now

    def _trip(self, reason: str, now: float) -> None:
        self.trips += 1
        self.last_trip_reason = reason
        self._transition(State.OPEN, reason, now)

    # ------------------------------------------------------------------ transitions

    def _transition(self, new: State, reason: str, now: float) -> None:
        old = self.state
        self.gen += 1
        self.state = new
        period = 0.0
        if new is State.OPEN:
            period = open_period(self.policy, self.trips)
            self.open_until = now + period
        else:
            self.open_until = 0.0
        if new is State.CLOSED:
            self.trips = 0
            self._reset_window()
        self._probes_admitted = 0
        self._probe_successes = 0
        self._half_open_since = now if new is State.HALF_OPEN else 0.0
        if self._on_transition is not None:
            self._on_transition(Transition(self.key, old, new, self.gen, reason, period, self.trips))

    def _reset_window(self) -> None:
        self._window.clear()
        self._failures = self._slow = self._consecutive = 0

    def adopt(self, state: State, gen: int, remaining: float, trips: int, now: float, reason: str = "shared") -> bool:
        """Take a state decided elsewhere (another replica, through Redis) if it is newer than ours."""
        if gen <= self.gen:
            return False
        old = self.state
        self.gen = gen
        self.state = state
        self.trips = trips
        self.open_until = now + remaining if state is State.OPEN else 0.0
        if state is State.CLOSED:
            self._reset_window()
        self._probes_admitted = 0
        self._probe_successes = 0
        self._half_open_since = now if state is State.HALF_OPEN else 0.0
        if state is State.OPEN:
            self.last_trip_reason = reason
        if self._on_transition is not None and old is not state:
            self._on_transition(Transition(self.key, old, state, gen, reason, remaining, trips))
        return True

    # ------------------------------------------------------------------ introspection

    def snapshot(self, now: float) -> dict[str, object]:
        n = len(self._window)
        return {
            "state": self.state.value,
            "generation": self.gen,
            "trips": self.trips,
            "retry_after_seconds": round(max(0.0, self.open_until - now), 3) if self.state is State.OPEN else 0.0,
            "last_trip_reason": self.last_trip_reason,
            "window_calls": n,
            "window_failures": self._failures,
            "window_slow": self._slow,
            "consecutive_failures": self._consecutive,
            "last_call_latency_ms": round(self.last_latency * 1000, 2) if self.last_latency is not None else None,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }
