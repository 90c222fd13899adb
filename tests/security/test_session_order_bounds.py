"""The per-session order of GET streams and POSTs (gateway/transports/order.py) holds nothing a client could grow
without bound, and never makes one caller wait for another's requests.

A waiter that should not wait is given a wait bound of an hour: it returns only because it did not wait (the guard
of a few seconds turns a wait into a failure, and is never a timing assertion).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.transports import order as order_mod
from gateway.transports.order import MAX_GETS_PER_SESSION, MAX_WAITERS_PER_SESSION, SessionOrder

pytestmark = pytest.mark.unit

HOUR = 3600.0
GUARD = 5.0
OWNER = ("example", "sid-1", "api_key:acme:owner")
STRANGER = ("example", "sid-1", "api_key:evil:stranger")


async def test_a_strangers_get_never_delays_the_owners_post() -> None:
    order = SessionOrder(wait_seconds=HOUR)
    for _ in range(MAX_GETS_PER_SESSION):
        assert order.opening(STRANGER, time.perf_counter()) is not None
    async with asyncio.timeout(GUARD):
        await order.wait_for_earlier(OWNER, time.perf_counter())


async def test_a_later_get_does_not_delay_an_earlier_post() -> None:
    order = SessionOrder(wait_seconds=HOUR)
    post_arrived = time.perf_counter()
    assert order.opening(OWNER, time.perf_counter()) is not None
    async with asyncio.timeout(GUARD):
        await order.wait_for_earlier(OWNER, post_arrived)


async def test_the_post_waits_for_the_earlier_get_and_goes_on_when_it_is_open() -> None:
    order = SessionOrder(wait_seconds=HOUR)
    get_arrived = time.perf_counter()
    ticket = order.opening(OWNER, get_arrived)
    assert ticket is not None
    post = asyncio.create_task(order.wait_for_earlier(OWNER, time.perf_counter()))
    await asyncio.sleep(0.05)
    assert not post.done()  # held while the GET is not open upstream
    order.opened(OWNER, get_arrived)
    async with asyncio.timeout(GUARD):
        await post
    assert order.keys == 0 and order.waiting == 0  # nothing is left behind


async def test_tickets_per_session_are_bounded() -> None:
    order = SessionOrder(wait_seconds=HOUR)
    tickets = [order.opening(OWNER, time.perf_counter()) for _ in range(MAX_GETS_PER_SESSION)]
    assert all(t is not None for t in tickets)
    assert order.opening(OWNER, time.perf_counter()) is None
    assert order.skipped == 1


async def test_keys_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(order_mod, "MAX_KEYS", 8)
    order = SessionOrder(wait_seconds=HOUR)
    for i in range(8):
        assert order.opening(("example", f"sid-{i}", "p"), time.perf_counter()) is not None
    assert order.opening(("example", "sid-overflow", "p"), time.perf_counter()) is None
    assert order.keys == 8


async def test_one_caller_cannot_fill_the_keys_for_everyone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ticket is taken before the session store says whether the caller owns the session: made-up session ids
    from one caller stop at that caller's bound, and another caller's GET is still ordered (red team)."""
    monkeypatch.setattr(order_mod, "MAX_KEYS_PER_CALLER", 4)
    order = SessionOrder(wait_seconds=HOUR)
    attacker = [order.opening(("example", f"made-up-{i}", "api_key:evil:atk"), time.perf_counter()) for i in range(50)]
    assert sum(t is not None for t in attacker) == 4
    assert order.keys == 4
    assert order.opening(OWNER, time.perf_counter()) is not None
    # the caller's bound frees up as its tickets are given back
    for t in attacker:
        if t is not None:
            t.settle()
    assert order.keys == 1
    assert order.opening(("example", "made-up-again", "api_key:evil:atk"), time.perf_counter()) is not None


async def test_waiters_per_session_are_bounded_and_the_next_post_goes_on() -> None:
    order = SessionOrder(wait_seconds=HOUR)
    get_arrived = time.perf_counter()
    ticket = order.opening(OWNER, get_arrived)
    assert ticket is not None
    waiting = [
        asyncio.create_task(order.wait_for_earlier(OWNER, time.perf_counter())) for _ in range(MAX_WAITERS_PER_SESSION)
    ]
    await asyncio.sleep(0.05)
    assert order.waiting == MAX_WAITERS_PER_SESSION
    async with asyncio.timeout(GUARD):
        await order.wait_for_earlier(OWNER, time.perf_counter())  # over the bound: not held
    assert order.skipped == 1
    ticket.settle()
    async with asyncio.timeout(GUARD):
        await asyncio.gather(*waiting)
    assert order.keys == 0 and order.waiting == 0


async def test_waiters_in_the_process_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(order_mod, "MAX_WAITERS", 3)
    order = SessionOrder(wait_seconds=HOUR)
    tickets = []
    waiting = []
    for i in range(3):
        key = ("example", f"sid-{i}", "p")
        tickets.append(order.opening(key, time.perf_counter()))
        waiting.append(asyncio.create_task(order.wait_for_earlier(key, time.perf_counter())))
    key = ("example", "sid-x", "p")
    assert order.opening(key, time.perf_counter()) is not None
    await asyncio.sleep(0.05)
    async with asyncio.timeout(GUARD):
        await order.wait_for_earlier(key, time.perf_counter())
    for t in tickets:
        assert t is not None
        t.settle()
    async with asyncio.timeout(GUARD):
        await asyncio.gather(*waiting)


async def test_a_get_that_never_opens_holds_the_post_only_for_the_bound() -> None:
    order = SessionOrder(wait_seconds=0.2)
    assert order.opening(OWNER, time.perf_counter()) is not None  # never settled
    async with asyncio.timeout(GUARD):
        await order.wait_for_earlier(OWNER, time.perf_counter())
    assert order.waiting == 0


async def test_a_cancelled_post_leaves_nothing_behind() -> None:
    order = SessionOrder(wait_seconds=HOUR)
    ticket = order.opening(OWNER, time.perf_counter())
    assert ticket is not None
    post = asyncio.create_task(order.wait_for_earlier(OWNER, time.perf_counter()))
    await asyncio.sleep(0.05)
    post.cancel()
    with pytest.raises(asyncio.CancelledError):
        await post
    assert order.waiting == 0 and ticket.waiters == []
    ticket.settle()
    assert order.keys == 0


# a session whose client can answer server-to-client requests expects its GET: its first request POST may reach the
# gateway before that GET and waits for it to arrive (gateway/transports/order.py)


async def test_a_post_ahead_of_the_expected_get_waits_for_it_to_arrive_and_open() -> None:
    order = SessionOrder(wait_seconds=HOUR, first_get_seconds=HOUR)
    order.expect_stream(OWNER)
    post_arrived = time.perf_counter()

    async def post() -> None:
        arrived = await order.wait_for_first_get(OWNER, post_arrived)
        await order.wait_for_earlier(OWNER, arrived)

    task = asyncio.create_task(post())
    await asyncio.sleep(0.05)
    assert not task.done() and order.first_get_waits == 1  # no GET has arrived yet
    get_arrived = time.perf_counter()  # later than the POST
    ticket = order.opening(OWNER, get_arrived)
    assert ticket is not None and not order.expecting
    await asyncio.sleep(0.05)
    assert not task.done()  # the GET arrived but is not open upstream yet
    order.opened(OWNER, get_arrived)
    async with asyncio.timeout(GUARD):
        await task
    assert order.keys == 0 and order.waiting == 0 and order.first_get_timeouts == 0


async def test_a_get_that_never_comes_holds_only_the_first_post_for_the_bound() -> None:
    order = SessionOrder(wait_seconds=HOUR, first_get_seconds=0.2)
    order.expect_stream(OWNER)
    async with asyncio.timeout(GUARD):
        await order.wait_for_first_get(OWNER, time.perf_counter())
    assert order.first_get_timeouts == 1 and not order.expecting  # later POSTs of the session do not wait
    async with asyncio.timeout(GUARD):
        await order.wait_for_first_get(OWNER, time.perf_counter())
    assert order.first_get_waits == 1 and order.waiting == 0


async def test_a_strangers_get_does_not_meet_the_owners_expectation() -> None:
    order = SessionOrder(wait_seconds=HOUR, first_get_seconds=HOUR)
    order.expect_stream(OWNER)
    task = asyncio.create_task(order.wait_for_first_get(OWNER, time.perf_counter()))
    await asyncio.sleep(0.05)
    assert order.opening(STRANGER, time.perf_counter()) is not None
    await asyncio.sleep(0.05)
    assert not task.done() and order.expecting
    assert order.opening(OWNER, time.perf_counter()) is not None
    async with asyncio.timeout(GUARD):
        await task


async def test_an_expectation_ends_with_its_window() -> None:
    order = SessionOrder(wait_seconds=HOUR, first_get_seconds=HOUR, expect_seconds=0.0)
    order.expect_stream(OWNER)
    async with asyncio.timeout(GUARD):
        await order.wait_for_first_get(OWNER, time.perf_counter())
    assert order.first_get_waits == 0 and not order.expecting


async def test_expectations_are_bounded_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(order_mod, "MAX_EXPECTED", 4)
    order = SessionOrder(wait_seconds=HOUR, first_get_seconds=HOUR)
    keys = [("example", f"sid-{i}", "p") for i in range(10)]
    for key in keys:
        order.expect_stream(key)
    assert list(order._expected) == keys[-4:]


async def test_first_get_waiters_per_session_are_bounded_and_a_cancelled_one_leaves_nothing() -> None:
    order = SessionOrder(wait_seconds=HOUR, first_get_seconds=HOUR)
    order.expect_stream(OWNER)
    waiting = [
        asyncio.create_task(order.wait_for_first_get(OWNER, time.perf_counter()))
        for _ in range(MAX_WAITERS_PER_SESSION)
    ]
    await asyncio.sleep(0.05)
    async with asyncio.timeout(GUARD):
        await order.wait_for_first_get(OWNER, time.perf_counter())  # over the bound: not held
    assert order.skipped == 1 and order.waiting == MAX_WAITERS_PER_SESSION
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert order.waiting == 0 and order._arrivals == {}


async def test_the_expected_get_orders_a_post_that_arrived_before_it_but_waits_later() -> None:
    """The POST arrived first, but its own session lookup (Redis) took longer than the GET's authentication: the
    GET met the expectation before the POST reached its wait. The POST still waits for that GET to be open."""
    order = SessionOrder(wait_seconds=HOUR, first_get_seconds=HOUR)
    order.expect_stream(OWNER)
    post_arrived = time.perf_counter()
    get_arrived = time.perf_counter()  # later than the POST
    ticket = order.opening(OWNER, get_arrived)
    assert ticket is not None and ticket.first and not order.expecting

    async def post() -> None:
        arrived = await order.wait_for_first_get(OWNER, post_arrived)  # nothing expected any more: at once
        await order.wait_for_earlier(OWNER, arrived)

    task = asyncio.create_task(post())
    await asyncio.sleep(0.05)
    assert not task.done()  # held until the session's first GET is open upstream
    order.opened(OWNER, get_arrived)
    async with asyncio.timeout(GUARD):
        await task
    # a later GET of the session (a reconnect) is an ordinary one: it does not hold a POST that came before it
    assert order.opening(OWNER, time.perf_counter() + HOUR) is not None
    async with asyncio.timeout(GUARD):
        await order.wait_for_earlier(OWNER, time.perf_counter())
