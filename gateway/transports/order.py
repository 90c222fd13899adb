"""Per-session order: a session's GET stream that arrived first is open upstream before a later POST is forwarded.

Why (issue 16): a client opens its standalone GET stream and sends a `tools/call` POST a millisecond later; an
upstream may send the call's server-to-client request (sampling, elicitation) only on that GET stream, and drops or
merely stores it when no GET stream is open yet. Two requests on two connections race through the gateway (chain
stages, a session lookup, an upstream connection each), so the POST could reach the upstream first and the call
waited forever. Directly, the GET the client sent first is first at the server.

So a GET that presents a session id takes a ticket as soon as its caller is authenticated, and gives it back once
the upstream answered the GET's headers (the stream is open there) or the GET failed or was refused, whichever comes
first. A POST of the same session, once its own binding is verified, waits for the tickets of GETs that arrived
before it, at most ORDER_WAIT_SECONDS after each such GET arrived. The wait never deadlocks: a ticket is given back
when its request ends at the latest, and no POST waits past the bound.

Keys and bounds (everything a client controls is bounded):
- a ticket is keyed by (server, session id, the authenticated caller's binding id), and a POST waits only after the
  session check found the caller is the session's owner: another caller presenting the session id (a leaked id)
  takes tickets under its own key, which no owner's POST ever waits for;
- at most MAX_GETS_PER_SESSION tickets per key and MAX_WAITERS_PER_SESSION waiting POSTs per key; at most
  MAX_KEYS_PER_CALLER keys per caller, MAX_KEYS keys and MAX_WAITERS waiting POSTs in the process. A ticket is
  taken before the session store has said whether the caller owns the session, so without the per-caller bound
  one caller sending GETs with made-up session ids could fill MAX_KEYS and leave every other caller's GETs
  unordered (red team). Beyond a bound the request goes on without ordering
  (counted in `skipped`), so nothing is refused for it and no memory or connection is held for it;
- a waiting POST holds no upstream connection (it waits before asking for one).

A POST that reaches the gateway before the session's GET (the two leave the client within a millisecond; the POST
usually rides a kept-alive connection, the GET a new one) is not ordered by tickets. So a session whose client
declared it can answer server-to-client requests (sampling, elicitation) is *expected* to open a GET stream
for EXPECT_SECONDS after `initialize`: its first request POST in that time waits, at most FIRST_GET_SECONDS, for
the GET to arrive, then for it to be open upstream as above; that GET is the session's *first*, and any POST of
the session waits for it to open, even one that arrived before it. If no GET arrives in time the expectation is dropped,
so a client that never opens a GET (or opens it on another replica) pays that wait once per session. Expectations
are bounded (MAX_EXPECTED, oldest dropped first) and keyed like tickets: only the session's owner's GET meets it.

The order holds within one gateway process: with several replicas, a GET and a POST that land on different replicas
are not ordered (docs/transports.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

# how long a POST waits, at most, for an earlier GET of its session to be open upstream (seconds after the GET
# arrived): an upstream answers a GET's headers in milliseconds; this only bounds a slow or stuck one
ORDER_WAIT_SECONDS = 1.0
MAX_GETS_PER_SESSION = 4
MAX_WAITERS_PER_SESSION = 16
MAX_KEYS = 10_000
# a GET holds its ticket only until the upstream answered its headers, so even a caller with many sessions has few
MAX_KEYS_PER_CALLER = 64
MAX_WAITERS = 10_000

# how long after `initialize` a session's client is expected to open its GET stream, and how long its first request
# POST waits for that GET to arrive: the SDK clients open it right after `notifications/initialized`
EXPECT_SECONDS = 5.0
FIRST_GET_SECONDS = 0.25
MAX_EXPECTED = 10_000

# (server, session id, caller's binding id)
Key = tuple[str, str, str]


class Ticket:
    """One GET's place in its session's order. `settle()` (idempotent) releases every POST waiting for it."""

    __slots__ = ("_entry", "_order", "arrived", "first", "key", "settled", "waiters")

    def __init__(self, order: SessionOrder, key: Key, entry: _Entry, arrived: float, first: bool = False) -> None:
        self._order = order
        self._entry = entry
        self.key = key
        self.arrived = arrived  # time.perf_counter() when the GET arrived (RequestContext.started)
        # the GET a session was expected to open: every POST of the session waits for it, whenever it arrived
        self.first = first
        self.settled = False
        self.waiters: list[asyncio.Future[None]] = []

    def settle(self) -> None:
        if self.settled:
            return
        self.settled = True
        for fut in self.waiters:
            if not fut.done():
                fut.set_result(None)
        self.waiters.clear()
        self._order._drop(self)


class _Entry:
    __slots__ = ("tickets", "waiting")

    def __init__(self) -> None:
        self.tickets: list[Ticket] = []
        self.waiting = 0


class SessionOrder:
    def __init__(
        self,
        wait_seconds: float = ORDER_WAIT_SECONDS,
        first_get_seconds: float = FIRST_GET_SECONDS,
        expect_seconds: float = EXPECT_SECONDS,
        on_first_get: Callable[[bool], None] | None = None,
    ) -> None:
        self.wait_seconds = wait_seconds
        self.first_get_seconds = first_get_seconds
        self.expect_seconds = expect_seconds
        self._entries: dict[Key, _Entry] = {}
        # sessions whose GET is expected soon -> until when (perf_counter); insertion order is deadline order
        self._expected: dict[Key, float] = {}
        # POSTs waiting for the expected GET to arrive
        self._arrivals: dict[Key, list[asyncio.Future[None]]] = {}
        # first POSTs that waited for a GET to arrive, and those whose GET did not come in time
        self.first_get_waits = 0
        self.first_get_timeouts = 0
        # told of each first-GET wait's end: True when the GET arrived (the transport metrics' counter)
        self._on_first_get = on_first_get
        # keys per caller (the key's binding id), for MAX_KEYS_PER_CALLER
        self._per_caller: dict[str, int] = {}
        self.waiting = 0
        # GETs not given a ticket and POSTs that did not wait because a bound was reached
        self.skipped = 0

    @property
    def keys(self) -> int:
        return len(self._entries)

    def expect_stream(self, key: Key) -> None:
        """The session was just created for a client that can answer server-to-client requests: its first request
        POSTs wait a moment for its GET (see the module's docstring)."""
        now = time.perf_counter()
        expected = self._expected
        while expected:
            oldest = next(iter(expected))
            if expected[oldest] > now and len(expected) < MAX_EXPECTED:
                break
            del expected[oldest]
        # re-inserted at the end, so that insertion order stays deadline order
        expected.pop(key, None)
        expected[key] = now + self.expect_seconds

    def opening(self, key: Key, arrived: float) -> Ticket | None:
        """A GET of the session is on its way upstream: its ticket, or None when a bound is reached."""
        # the expected GET: a POST that arrived before it but has not reached its wait yet (its own session lookup
        # may take longer than this GET's) must still wait for it
        first = bool(self._expected) and self._expected.pop(key, None) is not None
        if self._arrivals:
            # the POSTs waiting for this GET to arrive resume after this call, when its ticket is in place (or, when a
            # bound below refuses it one, unordered: the order fails open, it never refuses or holds a request)
            for fut in self._arrivals.pop(key, ()):
                if not fut.done():
                    fut.set_result(None)
        entry = self._entries.get(key)
        if entry is None:
            caller = key[2]
            held = self._per_caller.get(caller, 0)
            if len(self._entries) >= MAX_KEYS or held >= MAX_KEYS_PER_CALLER:
                self.skipped += 1
                return None
            entry = self._entries[key] = _Entry()
            self._per_caller[caller] = held + 1
        elif len(entry.tickets) >= MAX_GETS_PER_SESSION:
            self.skipped += 1
            return None
        ticket = Ticket(self, key, entry, arrived, first)
        entry.tickets.append(ticket)
        return ticket

    @property
    def expecting(self) -> bool:
        """Some session's GET is expected (a cheap test before `wait_for_first_get`)."""
        return bool(self._expected)

    async def wait_for_earlier(self, key: Key, arrived: float) -> None:
        """Wait until every GET of the session that arrived before `arrived` is open upstream (or failed), each at
        most `wait_seconds` after it arrived."""
        entry = self._entries.get(key)
        if entry is None:
            return  # the common case: no GET of this session is opening
        now = time.perf_counter()
        bound = self.wait_seconds
        earlier = [t for t in entry.tickets if (t.arrived < arrived or t.first) and now < t.arrived + bound]
        if not earlier:
            return
        if entry.waiting >= MAX_WAITERS_PER_SESSION or self.waiting >= MAX_WAITERS:
            self.skipped += 1
            return
        loop = asyncio.get_running_loop()
        entry.waiting += 1
        self.waiting += 1
        try:
            for ticket in earlier:
                if ticket.settled:
                    continue
                fut = loop.create_future()
                ticket.waiters.append(fut)
                remaining = ticket.arrived + bound - time.perf_counter()
                try:
                    async with asyncio.timeout(max(0.0, remaining)):
                        await fut
                except TimeoutError:
                    pass
                finally:
                    if fut in ticket.waiters:
                        ticket.waiters.remove(fut)
        finally:
            entry.waiting -= 1
            self.waiting -= 1
            self._forget_if_empty(key, entry)

    async def wait_for_first_get(self, key: Key, arrived: float) -> float:
        """A request POST of a session whose GET is expected: wait, at most `first_get_seconds`, for that GET to
        arrive. Returns the time from which a GET counts as earlier than this POST (for `wait_for_earlier`)."""
        deadline = self._expected.get(key)
        if deadline is None:
            return arrived
        now = time.perf_counter()
        if now >= deadline:
            del self._expected[key]
            return arrived
        waiters = self._arrivals.setdefault(key, [])
        if len(waiters) >= MAX_WAITERS_PER_SESSION or self.waiting >= MAX_WAITERS:
            self.skipped += 1
            if not waiters:
                del self._arrivals[key]
            return arrived
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(fut)
        self.waiting += 1
        self.first_get_waits += 1
        try:
            async with asyncio.timeout(min(self.first_get_seconds, deadline - now)):
                await fut
        except TimeoutError:
            # no GET on this process: the session's later POSTs go on at once
            self._expected.pop(key, None)
            self.first_get_timeouts += 1
            if self._on_first_get is not None:
                self._on_first_get(False)
            return arrived
        finally:
            self.waiting -= 1
            left = self._arrivals.get(key)
            if left is not None:
                if fut in left:
                    left.remove(fut)
                if not left:
                    del self._arrivals[key]
        if self._on_first_get is not None:
            self._on_first_get(True)
        # the GET arrived meanwhile: it counts as earlier than this POST
        return time.perf_counter()

    def opened(self, key: Key, arrived: float) -> None:
        """The GET that arrived at `arrived` is open upstream, or failed: settle its ticket."""
        entry = self._entries.get(key)
        if entry is None:
            return
        for ticket in entry.tickets:
            if ticket.arrived == arrived:
                ticket.settle()
                return

    def _drop(self, ticket: Ticket) -> None:
        entry = ticket._entry
        if ticket in entry.tickets:
            entry.tickets.remove(ticket)
        self._forget_if_empty(ticket.key, entry)

    def _forget_if_empty(self, key: Key, entry: _Entry) -> None:
        if not entry.tickets and entry.waiting == 0 and self._entries.get(key) is entry:
            del self._entries[key]
            caller = key[2]
            left = self._per_caller.get(caller, 0) - 1
            if left > 0:
                self._per_caller[caller] = left
            else:
                self._per_caller.pop(caller, None)
