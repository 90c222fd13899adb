"""Active health checks against real SDK upstream processes (streamable HTTP, legacy SSE, the faulty upstream)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.policy.loader import load_policy
from gateway.policy.snapshot import Snapshot
from gateway.upstream.health import HealthMonitor, InstanceHealth, Status
from tests.harness import Upstream, free_port, start_upstream

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Upstream]]:
    work = tmp_path_factory.mktemp("health")
    started: dict[str, Upstream] = {}
    try:
        started["good"] = start_upstream(work)
        started["sse"] = start_upstream(work, transport="sse")
        started["faulty"] = start_upstream(work, module="tests.upstreams.faulty")
        yield started
    finally:
        for up in started.values():
            up.proc.kill()  # a hung request would hold a graceful shutdown for its full timeout


def control(up: Upstream, **params: Any) -> dict[str, Any]:
    r = httpx.post(f"http://127.0.0.1:{up.port}/control", params=params, timeout=5)
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data


def snapshot(tmp: Path, servers: dict[str, dict[str, Any]]) -> Snapshot:
    d = tmp / f"p{time.monotonic_ns()}"
    d.mkdir()
    for name, content in {
        "servers.yaml": {"servers": {n: {"owner": "acme", **s} for n, s in servers.items()}},
        "tenants.yaml": {"tenants": {"acme": {"servers": list(servers)}}},
        "keys.yaml": {"keys": []},
        "limits.yaml": {},
        "access.yaml": {"rules": []},
    }.items():
        (d / name).write_text(yaml.safe_dump(content))
    return load_policy(d)


def monitor(changes: list[tuple[str, Status, Status]] | None = None) -> HealthMonitor:
    def changed(st: InstanceHealth, old: Status) -> None:
        if changes is not None:
            changes.append((st.url, old, st.status))

    return HealthMonitor(lambda snap, name: (), on_change=changed)


async def until(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


async def test_mcp_checks_follow_thresholds(tmp_path: Path, upstreams: dict[str, Upstream]) -> None:
    good, faulty = upstreams["good"], upstreams["faulty"]
    # the background loop stays off: its first check (within a second of start) could land between this test's
    # checks under load and reset the consecutive counts it is counting
    health = {"enabled": False, "timeout": 1, "healthy_threshold": 2, "unhealthy_threshold": 2}
    snap = snapshot(
        tmp_path,
        {
            "good": {"upstreams": [{"url": good.url}], "health": health},
            "bad": {"upstreams": [{"url": faulty.url}], "health": health},
            "sse": {"upstreams": [{"url": upstreams["sse"].url}], "transport": "sse", "health": health},
        },
    )
    changes: list[tuple[str, Status, Status]] = []
    mon = monitor(changes)
    mon.sync(snap)
    await mon.start()
    try:
        assert mon.running_checks() == set()  # only the checks below are counted
        assert await mon.check_once("good", good.url)
        st = mon.state("good", good.url)
        assert st is not None and st.status == "healthy" and st.last_latency is not None
        assert await mon.check_once("sse", upstreams["sse"].url)  # legacy SSE: the endpoint event arrived

        control(faulty, mode="status", status=500)
        assert not await mon.check_once("bad", faulty.url)
        bad = mon.state("bad", faulty.url)
        assert bad is not None and bad.status == "unknown"  # one failure is below the threshold
        assert mon.healthy("bad", faulty.url)
        assert not await mon.check_once("bad", faulty.url)
        assert bad.status == "unhealthy" and "500" in (bad.last_error or "")
        assert not mon.healthy("bad", faulty.url)

        control(faulty, mode="hang")
        assert not await mon.check_once("bad", faulty.url)
        assert "timeout" in (bad.last_error or "")

        control(faulty, mode="ok")
        assert await mon.check_once("bad", faulty.url)
        assert bad.status == "unhealthy"  # one success is below the healthy threshold
        assert await mon.check_once("bad", faulty.url)
        assert bad.status == "healthy"
        assert (faulty.url, "unknown", "unhealthy") in changes and (faulty.url, "unhealthy", "healthy") in changes
    finally:
        control(faulty, mode="ok")
        await mon.stop()


async def test_http_and_stateless_kinds_and_a_dead_port(tmp_path: Path, upstreams: dict[str, Upstream]) -> None:
    faulty, good = upstreams["faulty"], upstreams["good"]
    dead = f"http://127.0.0.1:{free_port()}/mcp"
    snap = snapshot(
        tmp_path,
        {
            # background loops off (enabled: False): only this test's checks write each instance's last error
            "stats": {
                "upstreams": [{"url": faulty.url}],
                "health": {"enabled": False, "kind": "http", "path": "/stats"},
            },
            "nopath": {
                "upstreams": [{"url": faulty.url}],
                "health": {"enabled": False, "kind": "http", "path": "/nope"},
            },
            "modern": {"upstreams": [{"url": good.url}], "health": {"enabled": False, "kind": "stateless"}},
            "dead": {"upstreams": [{"url": dead}], "health": {"enabled": False, "timeout": 1}},
        },
    )
    mon = monitor()
    mon.sync(snap)
    await mon.start()
    try:
        assert await mon.check_once("stats", faulty.url)
        assert not await mon.check_once("nopath", faulty.url)
        assert "404" in (mon.state("nopath", faulty.url).last_error or "")  # type: ignore[union-attr]
        # a legacy-only SDK server answers the 2026 probe with a JSON-RPC error: it is up and serving
        assert await mon.check_once("modern", good.url)
        assert not await mon.check_once("dead", dead)
        assert "Connect" in (mon.state("dead", dead).last_error or "")  # type: ignore[union-attr]
    finally:
        await mon.stop()


async def test_check_tasks_follow_policy_reloads(tmp_path: Path, upstreams: dict[str, Upstream]) -> None:
    good, faulty = upstreams["good"], upstreams["faulty"]
    fast = {"interval": 0.1, "timeout": 1, "jitter": 0.5}
    one = snapshot(tmp_path, {"a": {"upstreams": [{"url": good.url}], "health": fast}})
    two = snapshot(
        tmp_path,
        {
            "a": {"upstreams": [{"url": faulty.url, "weight": 2}], "health": fast},
            "b": {"upstreams": [{"url": good.url}], "health": {**fast, "enabled": False}},
        },
    )
    mon = monitor()
    mon.sync(one)
    await mon.start()
    try:
        assert mon.running_checks() == {("a", good.url)}
        await until(lambda: (mon.state("a", good.url) or InstanceHealth("", "")).checks >= 3, 10)
        mon.sync(two)
        assert mon.running_checks() == {("a", faulty.url)}  # removed instance stopped, disabled one not started
        assert mon.state("a", good.url) is None
        await until(lambda: (mon.state("a", faulty.url) or InstanceHealth("", "")).checks >= 2, 10)
        before = control(faulty)["requests"]
        mon.sync(one)
        assert mon.running_checks() == {("a", good.url)}
        await asyncio.sleep(0.5)
        # the faulty instance is no longer checked (at most one in-flight check could have landed)
        assert control(faulty)["requests"] - before <= 3
    finally:
        await mon.stop()
    assert mon.running_checks() == set()
