"""GatewayMetrics in one process tallies on the request path and applies at scrape time: what a scrape shows must
be exactly what observing every request directly (as with workers) shows."""

from __future__ import annotations

import math
import re
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from gateway.context import RequestContext, ShadowDecision
from gateway.jsonrpc import parse_message
from gateway.metrics import GatewayMetrics
from gateway.policy.model import PolicySet
from gateway.policy.servers import ServerPolicy
from gateway.policy.snapshot import Snapshot

pytestmark = pytest.mark.unit

SERVER = ServerPolicy.model_validate({"upstreams": [{"url": "http://u:1/mcp"}]})
SNAPSHOT = Snapshot.build(PolicySet(), "test", Path("."), 0.0)
# a request's duration is pinned (see the test), so bucket bounds must not be hit exactly: floats would decide
LATENCIES = [0.0001, 0.0004, 0.0007, 0.003, 0.04, 0.9, 7.0, 100.0, 0.0]


def ctx(i: int) -> RequestContext:
    c = RequestContext(
        request_id=f"r{i}",
        snapshot=SNAPSHOT,
        server_name="example",
        server=SERVER,
        client_ip="127.0.0.1",
        transport="streamable-http",
        http_method="POST",
    )
    method = ("tools/call", "initialize", "tools/list")[i % 3]
    c.message = parse_message(orjson.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": {"name": "t"}}))
    c.http_status = (200, 429, 200, 502)[i % 4]
    if c.http_status == 429:
        c.refused_stage, c.refused_reason = "ratelimit", "rate_limited"
    elif c.http_status == 502:
        c.refused_stage, c.refused_reason = "forward", "upstream_unreachable"
    if i % 5 == 0:
        c.shadow.append(ShadowDecision("authz", "tool_denied"))
    c.upstream_latency = None if i % 7 == 0 else LATENCIES[i % len(LATENCIES)]
    c.started = -LATENCIES[(i + 3) % len(LATENCIES)] - 0.00001
    return c


def samples(m: GatewayMetrics) -> dict[str, float]:
    text = m.render().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or "_created" in line:
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


def test_deferred_tallies_show_what_direct_observation_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    # each request's duration is read when it is observed, once per registry here: on a busy machine the two reads
    # could land in different buckets, so the clock is pinned and a duration is exactly what ctx() set
    monkeypatch.setattr(RequestContext, "elapsed", lambda self: 0.0 - self.started)
    direct = GatewayMetrics(CollectorRegistry(), worker=0)
    direct._deferred = False  # what every worker does with multiprocess files
    deferred = GatewayMetrics(CollectorRegistry(), worker=0)
    assert deferred._deferred
    for i in range(200):
        c = ctx(i)
        direct.observe(c)
        deferred.observe(c)
    got, want = samples(deferred), samples(direct)
    assert got.keys() == want.keys()
    for name, value in want.items():
        if "_sum{" in name:
            # summed in another order: equal up to float rounding
            assert math.isclose(got[name], value, rel_tol=1e-9, abs_tol=1e-9), name
        else:
            assert got[name] == value, name
    assert any(re.match(r'mcp_gateway_request_duration_seconds_bucket\{.*le="0.0005"', n) for n in got)
    # applied once: a second scrape shows the same
    assert samples(deferred) == got


def test_in_flight_counts_at_scrape_time() -> None:
    m = GatewayMetrics(CollectorRegistry(), worker=0)
    m.request_started()
    m.request_started()
    m.request_finished()
    assert samples(m)["mcp_gateway_in_flight_requests"] == 1
    m.request_finished()
    assert samples(m)["mcp_gateway_in_flight_requests"] == 0


async def test_paced_render_is_the_same_text_as_render(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import pacing

    monkeypatch.setattr(pacing, "SLICE_SECONDS", 0.0)  # a loop iteration after every metric family
    m = GatewayMetrics(CollectorRegistry(), worker=0)
    for i in range(60):
        m.observe(ctx(i))
    created = re.compile(r"^\S+_created(\{[^}]*\})? .*$", re.M)  # creation times differ between two collections
    assert created.sub("", (await m.render_paced()).decode()) == created.sub("", m.render().decode())
