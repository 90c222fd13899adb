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

The order holds within one gateway process: with several replicas, a GET and a POST that land on different replicas
are not ordered (docs/transports.md).
"""

from __future__ import annotations

import asyncio
import time

# how long a POST waits, at most, for an earlier GET of its session to be open upstream (seconds after the GET
# arrived): an upstream answers a GET's headers in milliseconds; this only bounds a slow or stuck one
ORDER_WAIT_SECONDS = 1.0
MAX_GETS_PER_SESSION = 4
MAX_WAITERS_PER_SESSION = 16
MAX_KEYS = 10_000
# a GET holds its ticket only until the upstream answered its headers, so even a caller with many sessions has few
MAX_KEYS_PER_CALLER = 64
MAX_WAITERS = 10_000

# (server, session id, caller's binding id)
Key = tuple[str, str, str]


class Ticket:
    """One GET's place in its session's order. `settle()` (idempotent) releases every POST waiting for it."""

    __slots__ = ("_entry", "_order", "arrived", "key", "settled", "waiters")

    def __init__(self, order: SessionOrder, key: Key, entry: _Entry, arrived: float) -> None:
        self._order = order
        self._entry = entry
        self.key = key
        self.arrived = arrived  # time.perf_counter() when the GET arrived (RequestContext.started)
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
    def __init__(self, wait_seconds: float = ORDER_WAIT_SECONDS) -> None:
        self.wait_seconds = wait_seconds
        self._entries: dict[Key, _Entry] = {}
        # keys per caller (the key's binding id), for MAX_KEYS_PER_CALLER
        self._per_caller: dict[str, int] = {}
        self.waiting = 0
        # GETs not given a ticket and POSTs that did not wait because a bound was reached
        self.skipped = 0

    @property
    def keys(self) -> int:
        return len(self._entries)

    def opening(self, key: Key, arrived: float) -> Ticket | None:
        """A GET of the session is on its way upstream: its ticket, or None when a bound is reached."""
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
        ticket = Ticket(self, key, entry, arrived)
        entry.tickets.append(ticket)
        return ticket

    async def wait_for_earlier(self, key: Key, arrived: float) -> None:
        """Wait until every GET of the session that arrived before `arrived` is open upstream (or failed), each at
        most `wait_seconds` after it arrived."""
        entry = self._entries.get(key)
        if entry is None:
            return  # the common case: no GET of this session is opening
        now = time.perf_counter()
        bound = self.wait_seconds
        earlier = [t for t in entry.tickets if t.arrived < arrived and now < t.arrived + bound]
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
