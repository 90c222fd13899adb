"""A switch between Redis and the in-process limits admits no more than the limits allow (issue 15, item 6), through
a real gateway whose private Redis is killed and restarted empty, or paused (SIGSTOP) and resumed, under load.

One tenant offers ten times a global 10 req/s with a burst of 40. Whatever the store, what the gateway admits in
any stretch of time [t1, t2] must fit the one bucket: at most burst + rate x (t2 - t1). Before the fix each switch
let about one extra burst through (the fallback started with full buckets; on the way back Redis still held its
state from before the outage), which the stretch from the first request to the last shows at once. Admission times
come from the gateway's own audit records.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.tenant_load import TenantLoad, decisions
from tests.e2e.test_fairness_gateway import Stopping
from tests.harness import (
    Gateway,
    RedisInstance,
    default_policies,
    metric_sample,
    running,
    start_gateway,
    start_upstream,
)

pytestmark = pytest.mark.e2e

RATE, BURST = 10.0, 40
SLACK = 2  # arrival (audit) vs decision times: a request or two at either end of a stretch


async def metric(gw: Gateway, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{gw.base}/metrics") as resp:
        return metric_sample(await resp.text(), name, **labels)


async def until_metric(gw: Gateway, name: str, value: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while await metric(gw, name) != value:
        assert time.monotonic() < deadline, f"{name} never became {value}"
        await asyncio.sleep(0.05)


def policies(upstream_url: str) -> dict[str, Any]:
    pol = default_policies(upstream_url, pool={"max_connections": 2000})
    pol["limits.yaml"] = {
        "tiers": {},
        "global": {"rate": RATE, "per": "second", "burst": BURST},
        "costs": {"initialize": 0},
        "probe_interval_seconds": 0.25,
        # the global bucket alone (a fair-share tier of the one tenant would hold it to a burst of one second)
        "fairness": {"enabled": False},
    }
    return pol


@pytest.mark.parametrize("fault", ["kill", "pause"])
async def test_a_switch_to_fallback_and_back_admits_no_extra_burst(
    tmp_path: Path, private_redis: RedisInstance, fault: str
) -> None:
    up = start_upstream(tmp_path, json_response=True)
    config = {"redis": {"url": private_redis.url}, "audit": {"log_records": False}}
    config["http"] = {"max_connections_per_ip": 4096}
    gw = start_gateway(
        tmp_path / "gw", policies(up.url), keys={"k1": {"tenant": "acme", "scopes": ["read", "write"]}}, config=config
    )
    load = TenantLoad(gw, "k1", 10 * RATE, max_credit=RATE, max_in_flight=512)
    stop = threading.Event()
    with running(gw, up), running(Stopping(stop)):
        task = load.in_thread(stop)
        deadline = time.monotonic() + 30
        while await metric(gw, "mcp_gateway_ratelimit_decisions_total", backend="redis") < 2 * BURST:
            assert time.monotonic() < deadline, "no load reached the limiter"
            await asyncio.sleep(0.1)
        if fault == "kill":
            private_redis.stop()
        else:
            private_redis.proc.signal(signal.SIGSTOP)
        await until_metric(gw, "mcp_gateway_ratelimit_fallback_active", 1)
        await asyncio.sleep(1.5)
        if fault == "kill":
            private_redis.start()  # empty: every bucket Redis held is gone
        else:
            private_redis.proc.signal(signal.SIGCONT)  # with its state from before the pause
        await until_metric(gw, "mcp_gateway_ratelimit_fallback_active", 0)
        await asyncio.sleep(1.5)
        stop.set()
        await task
        assert await metric(gw, "mcp_gateway_ratelimit_decisions_total", backend="fallback") > 0
    assert gw.stop() == 0
    assert load.statuses and set(load.statuses) <= {200, 429}, sorted(set(load.statuses))
    seen = decisions(tmp_path / "gw" / "audit.jsonl", "acme")
    admitted = [d.at for d in seen if d.allowed]
    refused = sum(not d.allowed for d in seen)
    span = admitted[-1] - admitted[0]
    assert refused > len(admitted), (refused, len(admitted))  # the load was well over the limit throughout
    assert len(admitted) >= 0.6 * RATE * span, (len(admitted), span)  # and the limit was used
    # every stretch between two admissions, the whole run (across both switches) included
    for i, t1 in enumerate(admitted):
        for j in range(i + 1, len(admitted)):
            count = j - i + 1
            allowed = BURST + RATE * (admitted[j] - t1) + SLACK
            assert count <= allowed, (i, j, count, allowed, span, len(admitted))
