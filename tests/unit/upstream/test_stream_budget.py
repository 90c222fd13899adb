"""The per-upstream stream budget (gateway/upstream/streams.py): work-conserving while a slot is free, equal shares
among the tenants holding streams once it is full, and a tenant under its share is never refused."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.context import RequestContext
from gateway.jsonrpc import parse_message
from gateway.policy.model import PolicySet
from gateway.policy.snapshot import Snapshot
from gateway.upstream.streams import StreamBudget, StreamLease, StreamShareExceeded, is_stream

pytestmark = pytest.mark.unit


class Events:
    def __init__(self) -> None:
        self.refused: list[str] = []
        self.evicted: list[str] = []

    def stream_refused(self, origin: str) -> None:
        self.refused.append(origin)

    def stream_evicted(self, origin: str) -> None:
        self.evicted.append(origin)


def _bound(budget: StreamBudget, tenant: str, ended: list[str], name: str) -> StreamLease:
    lease = budget.admit(tenant)
    lease.bind(lambda: ended.append(name))
    return lease


def test_one_tenant_may_fill_a_free_budget_but_not_exceed_it() -> None:
    events = Events()
    budget = StreamBudget("http://u:1", 3, events)
    leases = [budget.admit("hog") for _ in range(3)]
    with pytest.raises(StreamShareExceeded) as info:
        budget.admit("hog")
    assert (info.value.share, info.value.held) == (3, 3)
    assert budget.open == 3 and events.refused == ["http://u:1"]
    leases[0].release()
    leases[0].release()  # idempotent
    assert budget.open == 2
    budget.admit("hog")
    assert budget.open == 3


def test_a_newcomer_under_its_share_takes_the_newest_stream_of_the_biggest_holder() -> None:
    events = Events()
    budget = StreamBudget("o", 4, events)
    ended: list[str] = []
    hog = [_bound(budget, "hog", ended, f"hog{i}") for i in range(4)]
    small = budget.admit("small")  # full: fair share is 4 // 2 = 2, small holds 0
    assert ended == ["hog3"] and hog[3].evicted and events.evicted == ["o"]
    assert budget.held("hog") == 3 and budget.held("small") == 1 and budget.open == 4
    hog[3].release()  # the ended stream's request finishing gives nothing back twice
    assert budget.open == 4
    budget.admit("small")
    assert ended == ["hog3", "hog2"] and budget.held("hog") == 2
    with pytest.raises(StreamShareExceeded) as info:  # small now holds its share
        budget.admit("small")
    assert (info.value.share, info.value.held) == (2, 2)
    with pytest.raises(StreamShareExceeded):  # so does the hog
        budget.admit("hog")
    small.release()
    budget.admit("hog")  # a free slot goes to whoever asks
    assert budget.held("hog") == 3


def test_a_stream_still_opening_is_taken_only_when_its_tenant_has_no_open_one() -> None:
    budget = StreamBudget("o", 2)
    ended: list[str] = []
    opening = budget.admit("hog")
    bound = _bound(budget, "hog", ended, "open")
    budget.admit("small")
    assert ended == ["open"] and bound.evicted and not opening.evicted
    budget = StreamBudget("o", 2)
    first, second = budget.admit("hog"), budget.admit("hog")
    budget.admit("small")
    assert second.evicted and not first.evicted  # the newest, unbound: marked, and refused when its answer comes


def test_more_tenants_than_slots_is_first_come_first_served() -> None:
    budget = StreamBudget("o", 2)
    budget.admit("a")
    budget.admit("b")
    with pytest.raises(StreamShareExceeded) as info:
        budget.admit("c")
    assert info.value.share == 0


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 8),
    ops=st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.booleans(), st.integers(0, 50)), max_size=80),
)
def test_invariants_under_any_sequence(limit: int, ops: list[tuple[str, bool, int]]) -> None:
    budget = StreamBudget("o", limit)
    live: list[StreamLease] = []
    for tenant, opening, pick in ops:
        if not opening and live:
            lease = live.pop(pick % len(live))
            lease.release()
        else:
            was_full = budget.open >= limit
            share = budget.fair_share(tenant)
            held = budget.held(tenant)
            try:
                lease = budget.admit(tenant)
            except StreamShareExceeded:
                # refused only when full and at or over its share: a tenant under its share always gets in
                assert was_full and held + 1 > share
            else:
                lease.bind(lambda: None)
                live.append(lease)
        live = [lease for lease in live if not lease.evicted]
        counts: dict[str, int] = {}
        for lease in live:
            counts[lease.tenant] = counts.get(lease.tenant, 0) + 1
        assert budget.open == len(live) <= limit
        assert all(budget.held(t) == n for t, n in counts.items())
        assert budget.tenants == len(counts)


def _ctx(http_method: str, body: dict[str, Any] | None = None) -> RequestContext:
    ctx = RequestContext(
        request_id="r",
        snapshot=Snapshot.build(PolicySet.model_validate({}), "v1", Path("."), time.time()),
        server_name="s",
        server=None,
        client_ip="127.0.0.1",
        transport="streamable-http",
        http_method=http_method,
    )
    if body is not None:
        ctx.message = parse_message(orjson.dumps(body), None)
    return ctx


def test_streams_are_get_event_streams_and_listen_posts() -> None:
    listen = {"jsonrpc": "2.0", "id": 1, "method": "subscriptions/listen", "params": {}}
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}}
    assert is_stream(_ctx("GET"))
    assert is_stream(_ctx("POST", listen))
    assert not is_stream(_ctx("POST", call))
    assert not is_stream(_ctx("POST"))
    assert not is_stream(_ctx("DELETE"))
    assert not is_stream(_ctx("WS", listen))
