"""`workers: 2`: two processes behind one port (SO_REUSEPORT) serve traffic, sessions shared through Redis, and
`/metrics` totals, whichever worker answers the scrape, equal the requests sent, also after a worker is killed."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import time
from pathlib import Path

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

from tests.harness import Gateway, default_policies, metric_sample, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def worker_pids(supervisor: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # field 4 (after the parenthesised command) is the parent pid
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == supervisor:
            pids.append(int(entry.name))
    return sorted(pids)


def versions(text: str) -> dict[str, float]:
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^mcp_gateway_policy_snapshot_info\{version="([^"]+)"\} (\S+)$', text, re.M)
    }


async def scrape(gw: Gateway) -> str:
    # a new client (new connection) per scrape, so scrapes land on either worker
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{gw.base}/metrics")
        assert r.status_code == 200
        return r.text


async def wait_totals(gw: Gateway, calls: int, inits: int) -> str:
    deadline = time.monotonic() + 15
    text = ""
    while time.monotonic() < deadline:
        text = await scrape(gw)
        got_calls = metric_sample(text, "mcp_gateway_requests_total", method="tools/call", status="200")
        got_inits = metric_sample(text, "mcp_gateway_requests_total", method="initialize", status="200")
        if got_calls == calls and got_inits == inits:
            return text
        await asyncio.sleep(0.1)
    raise AssertionError(f"metrics never reached {calls} calls / {inits} initializes:\n{text}")


async def sdk_session(gw: Gateway, n: int) -> None:
    async with streamablehttp_client(gw.url(), headers=gw.auth("k1")) as (r, w, _), ClientSession(r, w) as s:
        await s.initialize()
        for i in range(2):
            res = await s.call_tool("add", {"a": n, "b": i})
            assert res.content[0].text == str(n + i)  # type: ignore[union-attr]


async def raw_initializes(gw: Gateway, count: int) -> None:
    for _ in range(count):
        async with httpx.AsyncClient() as c:  # one connection each: the kernel spreads them over the workers
            r = await c.post(gw.url(), headers={**HEADERS, **gw.auth("k1")}, json=INIT)
            assert r.status_code == 200, r.text


async def test_two_workers_one_port_metrics_totals(tmp_path: Path, redis_url: str) -> None:
    up = start_upstream(tmp_path)
    prefix = f"mgw-test-workers-{secrets.token_hex(4)}:"
    gw = start_gateway(
        tmp_path / "gw",
        default_policies(up.url),
        keys={"k1": {"tenant": "acme", "scopes": ["read", "write"]}},
        # no polling: the policy changes below reach the workers only through the supervisor's SIGHUP
        config={"workers": 2, "policy_poll_seconds": 0, "redis": {"url": redis_url, "key_prefix": prefix}},
    )
    with running(gw, up):
        deadline = time.monotonic() + 20
        while len(worker_pids(gw.proc.pid)) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        pids = worker_pids(gw.proc.pid)
        assert len(pids) == 2

        sessions = 6
        await asyncio.gather(*(sdk_session(gw, n) for n in range(sessions)))
        await raw_initializes(gw, 24)
        calls, inits = sessions * 2, sessions + 24

        text = await wait_totals(gw, calls, inits)
        per_worker = [metric_sample(text, "mcp_gateway_worker_requests_total", worker=str(i)) for i in range(2)]
        assert all(n > 0 for n in per_worker), f"one worker served everything: {per_worker}"
        for _ in range(6):  # every scrape, whichever worker answers it, shows the same totals
            text = await scrape(gw)
            assert metric_sample(text, "mcp_gateway_requests_total", method="tools/call", status="200") == calls
            assert metric_sample(text, "mcp_gateway_requests_total", method="initialize", status="200") == inits

        # scrape-time collectors (upstream health, from the resilience module) are shared too: one series per
        # live worker, labelled by pid
        deadline = time.monotonic() + 15
        healthy: dict[str, float] = {}
        while time.monotonic() < deadline:
            text = await scrape(gw)
            healthy = {str(pid): metric_sample(text, "mcp_gateway_upstream_healthy", pid=str(pid)) for pid in pids}
            if all(v == 1 for v in healthy.values()):
                break
            await asyncio.sleep(0.2)
        assert healthy == {str(pid): 1.0 for pid in pids}
        # gauges other modules compute with set_function (audit queue depth) are copied into the shared files
        queue_series = re.findall(r'^mcp_gateway_audit_queue_depth\{pid="(\d+)"\} ', text, re.M)
        assert sorted(int(p) for p in queue_series) == pids
        # the standard process and GC collectors: each live worker's gauges by pid, their counters summed over the
        # workers; no `_created` series (metrics.created_series is off)
        for pid in pids:
            assert metric_sample(text, "process_resident_memory_bytes", pid=str(pid)) > 0
            assert metric_sample(text, "python_info", pid=str(pid)) == 1
        assert metric_sample(text, "process_cpu_seconds_total") > 0
        assert re.search(r'^python_gc_collections_total\{generation="0"\} ', text, re.M)
        assert not re.search(r"^\w+_created[{ ]", text, re.M)
        # per-tool counters are shared like every counter; `add` is named by no policy here
        assert metric_sample(text, "mcp_gateway_tool_requests_total", server="example", tool="_other") == calls

        # SIGHUP to the supervisor reloads the policy in every worker: every scrape shows only the new version
        old_versions = {k for k, v in versions(text).items() if v == 1}
        assert len(old_versions) == 1
        tenants = {"tenants": {"acme": {"servers": ["example"], "tools": {"deny": ["secret_admin_tool"]}}}}
        gw.write_policies({"tenants.yaml": tenants})
        gw.proc.signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        current: dict[str, float] = {}
        while time.monotonic() < deadline:
            current = versions(await scrape(gw))
            if {k for k, v in current.items() if v == 1} - old_versions and all(current[k] == 0 for k in old_versions):
                break
            await asyncio.sleep(0.1)
        active = {k for k, v in current.items() if v == 1}
        assert len(active) == 1 and not active & old_versions, current
        reloads = metric_sample(await scrape(gw), "mcp_gateway_policy_reloads_total", result="ok")
        assert reloads == 4  # initial load + SIGHUP reload, in each of the two workers

        # a crashed worker is restarted; what it counted stays in the totals
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = worker_pids(gw.proc.pid)
            if len(now) == 2 and pids[0] not in now:
                break
            await asyncio.sleep(0.1)
        now = worker_pids(gw.proc.pid)
        assert len(now) == 2 and pids[0] not in now
        (restarted,) = set(now) - set(pids)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # up and serving: its sampler reports through the shared files
            if metric_sample(await scrape(gw), "mcp_gateway_upstream_healthy", pid=str(restarted)) == 1:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the restarted worker never came up")
        await raw_initializes(gw, 10)
        await sdk_session(gw, 100)
        text = await wait_totals(gw, calls + 2, inits + 11)
        # the dead worker's view is gone
        assert metric_sample(text, "mcp_gateway_upstream_healthy", pid=str(pids[0])) == 0

        gw.proc.signal(signal.SIGTERM)
        assert gw.proc.popen is not None
        assert gw.proc.popen.wait(30) == 0
        assert worker_pids(gw.proc.pid) == []
