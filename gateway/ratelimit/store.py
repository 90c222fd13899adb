"""The store protocol every limiter backend implements, and the in-process store (the embedded default and the
fallback when Redis is unreachable)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from math import floor
from typing import Protocol

from gateway.ratelimit.gcra import EPS, SlotCheck, SlotHold, TierCheck, TierResult, Verdict, refusing_tier


class LimiterStore(Protocol):
    name: str

    async def decide(self, tiers: Sequence[TierCheck], slots: Sequence[SlotCheck], slot_ttl: float) -> Verdict:
        """Decide every tier and take every slot atomically: all or nothing."""
        ...

    async def release(self, hold: SlotHold) -> None: ...


class PreparedTiers:
    """Tiers with the per-tier constants of `MemoryStore.decide_lean` computed once, for a caller that decides the
    same tiers over and over (the rate-limit stage, per client): key, T, tau = B*T, cost*T, tau + EPS, shadow and
    the check itself. Computed by the expressions decide_now evaluates, so the floats are the same."""

    __slots__ = ("rows", "tiers")

    def __init__(self, tiers: Sequence[TierCheck]) -> None:
        self.tiers = tiers
        rows: list[tuple[str, float, float, float, float, bool, TierCheck]] = []
        for check in tiers:
            t = check.interval
            tau = check.burst * t
            rows.append((check.key, t, tau, check.cost * t, tau + EPS, check.shadow, check))
        self.rows = tuple(rows)


class MemoryStore:
    """GCRA state and concurrency slots in dicts. Same semantics as the Redis script, one process only.

    Entries expire lazily: a sweep every `sweep_every` decisions drops TATs in the past (an idle key is the same
    as a missing one) and expired slots, so memory stays bounded by the keys active within one burst window.
    """

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic, sweep_every: int = 4096) -> None:
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._slots: dict[str, dict[str, float]] = {}
        self._ids = itertools.count(1)
        self._ops = 0
        self._sweep_every = sweep_every
        # While a Redis-backed replica decides in process (fallback): buckets start empty at the switch, so the
        # switch itself admits no burst, and the tolerance of every key used is kept for sealing Redis on return.
        self._empty_at: float | None = None

    def __len__(self) -> int:
        return len(self._tats)

    def decide_now(self, tiers: Sequence[TierCheck], slots: Sequence[SlotCheck], slot_ttl: float) -> Verdict:
        now = self._clock()
        self._ops += 1
        if self._ops % self._sweep_every == 0:
            self.sweep(now)
        return self._decide_at(tiers, slots, slot_ttl, now)

    def begin_fallback(self) -> None:
        """Redis just failed: decide in process from now on, every bucket empty at this instant (TATs of an earlier
        outage are forgotten). A full bucket here would admit a whole burst beyond what Redis already admitted."""
        self._tats.clear()
        self._empty_at = self._clock()

    def fallback_state(self) -> dict[str, float]:
        """Key -> seconds until its bucket is full again, for every tier whose bucket is not full now: what sealing
        Redis on the way back carries over. Read from the live TATs, which the sweep keeps bounded to the keys
        active within one burst window (a separate list of every key decided grew with every client address)."""
        now = self._clock()
        return {key: tat - now for key, tat in self._tats.items() if tat > now}

    def end_fallback(self) -> None:
        self._empty_at = None

    def decide_lean(self, prepared: PreparedTiers) -> Verdict | TierResult | None:
        """What `decide_now(prepared.tiers, [], 0)` decides and writes, without building its Verdict when every tier
        (shadow ones included) admits, the embedded gateway's common case. Then the answer is the tightest enforced
        tier's result (the one the RateLimit header reports; None when every tier is shadow); otherwise it is
        decide_now's Verdict, decided at the same instant."""
        now = self._clock()
        self._ops += 1
        if self._ops % self._sweep_every == 0:
            self.sweep(now)
        tats = self._tats
        news: list[float] = []
        best: TierCheck | None = None
        best_remaining = 0
        best_reset = 0.0
        # _decide_at's arithmetic on the prepared constants (the same expressions, so the same floats), keeping
        # only what the tightest tier needs
        for key, t, tau, cost_t, limit, shadow, check in prepared.rows:
            tat = tats.get(key)
            base = now if tat is None or tat < now else tat
            new = base + cost_t
            diff = new - now
            if diff > limit:
                return self._decide_at(prepared.tiers, (), 0.0, now)
            news.append(new)
            if shadow:
                continue
            remaining = floor((tau - diff + EPS) / t)
            # headers.tightest's order: fewest remaining, then the longest reset, then the first
            if best is None or remaining < best_remaining or (remaining == best_remaining and diff > best_reset):
                best, best_remaining, best_reset = check, remaining, diff
        for row, new_tat in zip(prepared.rows, news, strict=True):
            tats[row[0]] = new_tat
        if best is None:
            return None
        return TierResult(best.name, True, best_remaining, 0.0, best_reset, best.burst, best.interval, best.shadow)

    def _decide_at(
        self, tiers: Sequence[TierCheck], slots: Sequence[SlotCheck], slot_ttl: float, now: float
    ) -> Verdict:
        # gcra.evaluate/decide inlined (same expressions, same order, so the same floats): this runs for every
        # request, and the per-tier TierOutcome objects and intermediate lists cost more than the arithmetic
        tats = self._tats
        results: list[TierResult] = []
        news: list[float | None] = []
        admitted = True
        empty_at = self._empty_at
        for check in tiers:
            t = check.interval
            tau = check.burst * t
            tat = tats.get(check.key)
            if tat is None and empty_at is not None:
                # first use since the switch to fallback: the bucket starts empty (remembered even if this request
                # is refused, so that sealing Redis on the way back carries it over)
                tat = tats[check.key] = empty_at + tau
            base = now if tat is None or tat < now else tat
            new = base + check.cost * t
            diff = new - now
            if diff <= tau + EPS:
                remaining = floor((tau - diff + EPS) / t)
                results.append(TierResult(check.name, True, remaining, 0.0, diff, check.burst, t, check.shadow))
                news.append(new)
            else:
                remaining = max(0, floor((tau - (base - now) + EPS) / t))
                results.append(
                    TierResult(check.name, False, remaining, diff - tau, base - now, check.burst, t, check.shadow)
                )
                news.append(None)
                if not check.shadow:
                    admitted = False
        if not admitted:
            return Verdict(False, results, refusing_tier(results), backend=self.name)
        for slot in slots:
            held = self._slots.get(slot.key)
            if held:
                for member in [m for m, exp in held.items() if exp <= now]:
                    del held[member]
                if len(held) >= slot.cap:
                    return Verdict(False, results, None, slot_refused=slot, backend=self.name)
        for check, new_tat in zip(tiers, news, strict=True):
            if new_tat is not None:
                tats[check.key] = new_tat
        hold = None
        if slots:
            member = f"m{next(self._ids)}"
            for slot in slots:
                self._slots.setdefault(slot.key, {})[member] = now + slot_ttl
            hold = SlotHold(member, tuple(s.key for s in slots), self.name)
        return Verdict(True, results, None, hold=hold, backend=self.name)

    async def decide(self, tiers: Sequence[TierCheck], slots: Sequence[SlotCheck], slot_ttl: float) -> Verdict:
        return self.decide_now(tiers, slots, slot_ttl)

    def refusal_one(
        self, name: str, key: str, interval: float, burst: float, cost: int, shadow: bool
    ) -> TierResult | None:
        """One tier, no slots: what `decide_now([TierCheck(name, key, interval, burst, cost, shadow)], [], 0)` decides
        (and writes), but allocating nothing when the tier admits. None = admitted; otherwise the refusing tier's
        result (enforced or shadow; a shadow refusal, like an enforced one, leaves the TAT untouched). The per-IP
        guard runs this for every request, before anything else."""
        now = self._clock()
        self._ops += 1
        if self._ops % self._sweep_every == 0:
            self.sweep(now)
        t = interval
        tau = burst * t
        tat = self._tats.get(key)
        base = now if tat is None or tat < now else tat
        new = base + cost * t
        diff = new - now
        if diff <= tau + EPS:
            self._tats[key] = new
            return None
        remaining = max(0, floor((tau - (base - now) + EPS) / t))
        return TierResult(name, False, remaining, diff - tau, base - now, burst, t, shadow)

    def release_now(self, hold: SlotHold) -> None:
        for key in hold.keys:
            held = self._slots.get(key)
            if held is not None:
                held.pop(hold.member, None)
                if not held:
                    del self._slots[key]

    async def release(self, hold: SlotHold) -> None:
        self.release_now(hold)

    def refresh(self, holds: Sequence[SlotHold], slot_ttl: float) -> None:
        expiry = self._clock() + slot_ttl
        for hold in holds:
            for key in hold.keys:
                held = self._slots.get(key)
                if held is not None and hold.member in held:
                    held[hold.member] = expiry

    def in_use(self, key: str) -> int:
        now = self._clock()
        return sum(1 for exp in self._slots.get(key, {}).values() if exp > now)

    def sweep(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        for key in [k for k, tat in self._tats.items() if tat <= now]:
            del self._tats[key]
        for key in list(self._slots):
            held = self._slots[key]
            for member in [m for m, exp in held.items() if exp <= now]:
                del held[member]
            if not held:
                del self._slots[key]
