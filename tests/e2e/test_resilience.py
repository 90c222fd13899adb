"""Fault injection through real gateway processes and real SDK upstream processes.

Raw HTTP where the test must see statuses and headers (the v1 SDK client hangs on non-2xx); the SDK client where
the point is that MCP sessions keep working. Every request has a client-side deadline, and every answer is
checked to be a well-formed JSON-RPC message.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

from tests.conftest import problem_reason
from tests.harness import Gateway, Upstream, start_gateway, start_upstream, wait_port

pytestmark = pytest.mark.e2e

FAULTY = "tests.upstreams.faulty"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
# `adm` reads upstream URLs in /admin/servers: an operator's view (a tenant admin's has no URLs)
KEYS = {
    "k1": {"tenant": "acme", "scopes": ["read", "write"]},
    "adm": {"tenant": "acme", "scopes": ["admin"], "role": "operator"},
}
GATEWAY_CODES = range(-31999, -31000)
NO_HEALTH = {"enabled": False}
FAST_TIMEOUTS = {"connect": 0.5, "first_byte": 0.6, "idle": 5}
SMALL_POOL_WAIT = {"max_wait_seconds": 0.2}


def policies(servers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "servers.yaml": {"servers": {n: {"owner": "acme", **s} for n, s in servers.items()}},
        "tenants.yaml": {"tenants": {"acme": {"servers": list(servers)}}},
        "keys.yaml": {"keys": []},
        "limits.yaml": {},
        "access.yaml": {"rules": []},
    }


def init(rpc_id: int | str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rpc_id,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }


def wellformed(resp: httpx.Response, rpc_id: int | str) -> dict[str, Any]:
    """The answer is one JSON-RPC message; a gateway refusal echoes the id and uses a gateway code."""
    assert resp.headers["content-type"].startswith("application/json"), resp.text
    msg: dict[str, Any] = resp.json()
    assert msg["jsonrpc"] == "2.0"
    assert ("result" in msg) != ("error" in msg)
    if resp.status_code in (502, 503, 504):
        assert msg["id"] == rpc_id
        assert msg["error"]["code"] in GATEWAY_CODES
        assert isinstance(msg["error"]["data"]["reason"], str)
    elif resp.status_code == 200:
        assert msg["id"] == rpc_id and "result" in msg
    return msg


class Client:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0), headers=gw.auth("k1"))
        self._ids = iter(range(1, 1_000_000))

    async def init(self, server: str) -> tuple[int, dict[str, Any], httpx.Response]:
        rid = next(self._ids)
        r = await self.http.post(self.gw.url(server), json=init(rid), headers=HEADERS)
        return r.status_code, wellformed(r, rid), r

    async def admin(self) -> dict[str, Any]:
        r = await self.http.get(f"{self.gw.base}/admin/servers", headers=self.gw.auth("adm"))
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    async def breaker(self, server: str, index: int = 0) -> dict[str, Any]:
        data = await self.admin()
        b: dict[str, Any] = data["servers"][server]["instances"][index]["breaker"]
        return b

    async def close(self) -> None:
        await self.http.aclose()


def control(up: Upstream | int, **params: Any) -> dict[str, Any]:
    port = up if isinstance(up, int) else up.port
    r = httpx.post(f"http://127.0.0.1:{port}/control", params=params, timeout=5)
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data


async def until(cond: Callable[[], Any], timeout: float, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(step)


@contextmanager
def counting_listener(port: int) -> Iterator[list[int]]:
    """A bare listening socket on `port` that counts every connection accepted (and answers nothing)."""
    count = [0]
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(64)
    srv.settimeout(0.05)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            count[0] += 1
            conns.append(conn)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield count
    finally:
        stop.set()
        t.join(2)
        for c in conns:
            c.close()
        srv.close()


# ----------------------------------------------------------------------------------------------- killed upstream


async def test_killed_upstream_opens_breaker_503_without_connecting_and_probe_closes(tmp_path: Path) -> None:
    up = start_upstream(tmp_path, module=FAULTY)
    port = up.port
    breaker = {"consecutive_failures": 3, "open_seconds": 4, "max_open_seconds": 4, "half_open_probes": 1}
    gw = start_gateway(
        tmp_path / "gw",
        policies(
            {
                "svc": {
                    "upstreams": [{"url": up.url}],
                    "breaker": breaker,
                    "health": NO_HEALTH,
                    "retry": {"attempts": 0},
                    "timeouts": FAST_TIMEOUTS,
                    "pool": SMALL_POOL_WAIT,
                }
            }
        ),
        keys=KEYS,
    )
    client = Client(gw)
    restarted: Upstream | None = None
    try:
        statuses: list[int] = []
        killed = asyncio.Event()

        async def worker() -> None:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                status, _, _ = await client.init("svc")
                statuses.append(status if killed.is_set() else -status)
                if killed.is_set() and status == 503:
                    return

        load = [asyncio.create_task(worker()) for _ in range(4)]
        await until(lambda: len(statuses) >= 20, 15)
        up.proc.kill()  # mid-load
        killed.set()
        await asyncio.wait_for(asyncio.gather(*load), 25)
        after = [s for s in statuses if s > 0]
        assert all(-s == 200 for s in statuses if s < 0)
        assert set(after) <= {200, 502, 503}  # in-flight at the kill may still succeed; then refused / open
        failures_before_open = after.index(503)
        assert after[:failures_before_open].count(502) >= breaker["consecutive_failures"]
        b = await client.breaker("svc")
        assert b["state"] == "open" and b["last_trip_reason"] == "consecutive_failures"
        # the last failure seen: a refused connect, or a request whose connection the kill cut (ordering varies)
        assert b["last_error"] in ("connect", "reset")

        # while open: 503 + Retry-After at once, and no connection attempt reaches the port
        with counting_listener(port) as accepted:
            for _ in range(20):
                status, msg, resp = await client.init("svc")
                assert status == 503
                assert msg["error"]["data"]["reason"] == "circuit_open"
                assert 1 <= int(resp.headers["Retry-After"]) <= 4
                assert msg["error"]["data"]["retryAfterSeconds"] == int(resp.headers["Retry-After"])
            assert accepted[0] == 0

        restarted = start_upstream(tmp_path, module=FAULTY, port=port)

        async def first_non_503() -> int | None:
            status, _, _ = await client.init("svc")
            return status if status != 503 else None

        assert await until(first_non_503, 10, step=0.1) == 200  # the half-open probe went through
        assert (await client.breaker("svc"))["state"] == "closed"
        for _ in range(5):
            assert (await client.init("svc"))[0] == 200
        assert control(restarted)["requests"] == 6
    finally:
        await client.close()
        gw.stop()
        up.proc.kill()
        if restarted is not None:
            restarted.proc.kill()


# ----------------------------------------------------------------------------------------------- fault modes


async def test_hang_500_reset_trip_and_4xx_does_not(tmp_path: Path) -> None:
    up = start_upstream(tmp_path, module=FAULTY)
    common = {
        "upstreams": [{"url": up.url}],
        "health": NO_HEALTH,
        "timeouts": FAST_TIMEOUTS,
        "pool": SMALL_POOL_WAIT,
        "retry": {"attempts": 0},
    }
    consecutive = {"consecutive_failures": 3, "min_calls": 100, "window": 100, "open_seconds": 30}
    slow_rule = {
        "consecutive_failures": 100,
        "failure_rate": 1.0,
        "min_calls": 2,
        "window": 2,
        "slow_call_seconds": 0.3,
        "slow_call_rate": 0.5,
        "open_seconds": 30,
    }
    gw = start_gateway(
        tmp_path / "gw",
        policies(
            {
                "hang": {**common, "breaker": slow_rule},
                "slow": {**common, "breaker": slow_rule},
                "e500": {**common, "breaker": consecutive},
                "reset": {**common, "breaker": consecutive},
                "e4xx": {**common, "breaker": consecutive},
            }
        ),
        keys=KEYS,
    )
    client = Client(gw)
    try:
        # admin scope is required for the servers view
        r = await client.http.get(f"{gw.base}/admin/servers")
        assert problem_reason(r.headers["content-type"], r.status_code, r.json()) == "admin_scope_required"
        assert r.status_code == 403

        control(up, mode="hang")
        for _ in range(2):
            status, msg, _ = await client.init("hang")
            assert status == 504 and msg["error"]["data"]["reason"] == "upstream_timeout"
        status, msg, _ = await client.init("hang")
        assert status == 503 and msg["error"]["data"]["reason"] == "circuit_open"
        b = await client.breaker("hang")
        assert b["state"] == "open" and b["last_trip_reason"] == "slow_call_rate" and b["last_error"] == "timeout"

        control(up, mode="slow", delay=0.5)  # answers, but slower than slow_call_seconds: slow without failing
        for _ in range(2):
            assert (await client.init("slow"))[0] == 200
        assert (await client.init("slow"))[0] == 503
        b = await client.breaker("slow")
        assert b["last_trip_reason"] == "slow_call_rate" and b["last_error"] is None

        control(up, mode="status", status=500)
        for _ in range(3):
            assert (await client.init("e500"))[0] == 500  # the upstream's own answer is relayed
        assert (await client.init("e500"))[0] == 503
        assert (await client.breaker("e500"))["last_error"] == "status 500"

        control(up, mode="reset")
        for _ in range(3):
            status, msg, _ = await client.init("reset")
            assert status == 502 and msg["error"]["data"]["reason"] == "upstream_unreachable"
        assert (await client.init("reset"))[0] == 503
        assert (await client.breaker("reset"))["last_error"] == "reset"

        control(up, mode="status", status=400)
        for _ in range(8):
            assert (await client.init("e4xx"))[0] == 400
        b = await client.breaker("e4xx")
        assert b["state"] == "closed" and b["window_calls"] == 8 and b["window_failures"] == 0

        before = control(up)["requests"]
        for name in ("hang", "slow", "e500", "reset"):
            assert (await client.init(name))[0] == 503
        assert control(up)["requests"] == before  # open circuits sent nothing

        metrics = (await client.http.get(f"{gw.base}/metrics")).text
        assert 'mcp_gateway_breaker_state{server="e500",upstream="' + up.url + '"} 2.0' in metrics
        assert 'mcp_gateway_breaker_state{server="e4xx",upstream="' + up.url + '"} 0.0' in metrics
        assert "mcp_gateway_breaker_transitions_total{" in metrics
        assert 'mcp_gateway_upstream_pool_connections{state="in_use"' in metrics
    finally:
        await client.close()
        gw.stop()
        up.proc.kill()


# ----------------------------------------------------------------------------------------------- two replicas


async def test_two_gateways_share_open_within_a_second_and_admit_exactly_n_probes(
    tmp_path: Path, redis_url: str
) -> None:
    up = start_upstream(tmp_path, module=FAULTY)
    probes = 2
    server = {
        "upstreams": [{"url": up.url}],
        "health": NO_HEALTH,
        "retry": {"attempts": 0},
        "timeouts": {"connect": 1, "first_byte": 5, "idle": 5},
        "breaker": {
            "consecutive_failures": 2,
            "open_seconds": 2,
            "max_open_seconds": 2,
            "half_open_probes": probes,
            "slow_call_seconds": 30,
        },
    }
    cfg = {"redis": {"url": redis_url, "key_prefix": f"mgwtest:{uuid.uuid4().hex[:10]}:"}}
    pol = policies({"svc": server})
    gw1 = start_gateway(tmp_path / "gw1", pol, keys=KEYS, config=cfg, wait=False)
    gw2 = start_gateway(tmp_path / "gw2", pol, keys=KEYS, config=cfg, wait=False)
    wait_port(gw1.port, proc=gw1.proc.popen, log=gw1.proc.log)
    wait_port(gw2.port, proc=gw2.proc.popen, log=gw2.proc.log)
    c1, c2 = Client(gw1), Client(gw2)
    try:
        await until(lambda: _shared(c1), 10)
        await until(lambda: _shared(c2), 10)
        control(up, mode="status", status=500)
        for _ in range(2):
            assert (await c1.init("svc"))[0] == 500
        tripped = time.monotonic()
        assert (await c1.breaker("svc"))["state"] == "open"

        async def gw2_open() -> bool:
            return (await c2.breaker("svc"))["state"] == "open"

        await until(gw2_open, 1.0, step=0.01)
        assert time.monotonic() - tripped < 1.0
        before = control(up)["requests"]
        status, msg, _ = await c2.init("svc")
        assert status == 503 and msg["error"]["data"]["reason"] == "circuit_open"
        assert control(up)["requests"] == before

        # probes take a while, so every request below arrives while they are in flight
        control(up, mode="slow", delay=3.0)
        retry_after = (await c1.breaker("svc"))["retry_after_seconds"]
        await asyncio.sleep(retry_after + 0.2)
        results = await asyncio.gather(*(c.init("svc") for _ in range(5) for c in (c1, c2)))
        codes = sorted(s for s, _, _ in results)
        assert codes == [200] * probes + [503] * (10 - probes)
        assert control(up)["requests"] - before == probes

        async def both_closed() -> bool:
            return (await c1.breaker("svc"))["state"] == "closed" and (await c2.breaker("svc"))["state"] == "closed"

        await until(both_closed, 5)
        control(up, mode="ok")
        assert (await c2.init("svc"))[0] == 200
    finally:
        await c1.close()
        await c2.close()
        gw1.stop()
        gw2.stop()
        up.proc.kill()


async def _shared(c: Client) -> bool:
    return bool((await c.admin())["breaker_state_shared"])


# ----------------------------------------------------------------------------------------------- replicas


@pytest.mark.parametrize("health_checks", [True, False], ids=["health-checks", "retries-and-breaker-only"])
async def test_two_instances_one_down_every_session_succeeds_on_the_other(tmp_path: Path, health_checks: bool) -> None:
    live = start_upstream(tmp_path)
    dead = start_upstream(tmp_path)
    dead.proc.kill()
    health = {"interval": 0.3, "timeout": 0.5, "unhealthy_threshold": 1} if health_checks else NO_HEALTH
    gw = start_gateway(
        tmp_path / "gw",
        policies(
            {
                "svc": {
                    "upstreams": [{"url": dead.url}, {"url": live.url}],
                    "health": health,
                    "retry": {"attempts": 1, "budget_min_retries": 20},
                    "timeouts": FAST_TIMEOUTS,
                    "breaker": {"consecutive_failures": 2, "open_seconds": 60},
                }
            }
        ),
        keys=KEYS,
    )
    client = Client(gw)
    try:
        if health_checks:

            async def dead_known() -> bool:
                inst = (await client.admin())["servers"]["svc"]["instances"][0]
                return bool(inst["health"]["status"] == "unhealthy")

            await until(dead_known, 5)
            # the failed check opened the instance's breaker before any request was sent to it
            b = await client.breaker("svc", 0)
            assert b["state"] == "open" and b["last_trip_reason"] == "health_check"
        ports: set[int] = set()
        for _ in range(8):
            async with (
                streamablehttp_client(gw.url("svc"), headers=gw.auth("k1"), timeout=10) as (r, w, _),
                ClientSession(r, w) as s,
            ):
                await asyncio.wait_for(s.initialize(), 10)
                first = await asyncio.wait_for(s.call_tool("whoami", {}), 10)
                second = await asyncio.wait_for(s.call_tool("whoami", {}), 10)
                a = first.content[0].text  # type: ignore[union-attr]
                assert a == second.content[0].text  # type: ignore[union-attr]  # the session stays on its instance
                ports.add(int(json.loads(a)["port"]))
        assert ports == {live.port}
        view = await client.admin()
        inst = {i["url"]: i for i in view["servers"]["svc"]["instances"]}
        if health_checks:
            assert inst[dead.url]["health"]["status"] == "unhealthy"
            assert inst[live.url]["health"]["status"] == "healthy"
            assert inst[dead.url]["health"]["last_error"]
        else:
            # nothing knew the instance was down: never-delivered requests went to the other one, then the
            # dead instance's breaker opened and the balancer stopped choosing it
            assert inst[dead.url]["health"]["status"] == "disabled"
            metrics = (await client.http.get(f"{gw.base}/metrics")).text
            assert 'mcp_gateway_upstream_retries_total{reason="not_delivered",server="svc"}' in metrics
            assert inst[dead.url]["breaker"]["state"] == "open"
    finally:
        await client.close()
        gw.stop()
        live.proc.kill()


# ----------------------------------------------------------------------------------------------- pools


def gauge(metrics: str, line_prefix: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_prefix} not in metrics")


async def test_pool_limit_makes_requests_wait_a_bounded_time_and_is_visible(tmp_path: Path) -> None:
    up = start_upstream(tmp_path, module=FAULTY)
    gw = start_gateway(
        tmp_path / "gw",
        policies(
            {
                "svc": {
                    "upstreams": [{"url": up.url}],
                    "health": NO_HEALTH,
                    "retry": {"attempts": 0},
                    "pool": {"max_connections": 1, "max_wait_seconds": 1.5},
                    "timeouts": {"connect": 0.5, "first_byte": 10, "idle": 10},
                    "breaker": {"enabled": False},
                }
            }
        ),
        keys=KEYS,
    )
    client = Client(gw)
    origin = f"http://127.0.0.1:{up.port}"
    try:
        control(up, mode="slow", delay=4.0)
        holder = asyncio.create_task(client.init("svc"))
        await asyncio.sleep(0.5)
        waiter = asyncio.create_task(client.init("svc"))

        async def one_waiting() -> bool:
            text = (await client.http.get(f"{gw.base}/metrics")).text
            prefix = f'mcp_gateway_upstream_pool_connections{{state="waiting",upstream="{origin}"}}'
            return gauge(text, prefix) == 1.0

        await until(one_waiting, 1.2, step=0.05)
        text = (await client.http.get(f"{gw.base}/metrics")).text
        assert gauge(text, f'mcp_gateway_upstream_pool_connections{{state="in_use",upstream="{origin}"}}') == 1.0
        assert gauge(text, f'mcp_gateway_upstream_pool_connections{{state="limit",upstream="{origin}"}}') == 1.0
        # the waiter gives up after max_wait_seconds with a well-formed 503 (the gateway's own connection cap, not
        # the upstream's fault; nothing was sent), long before the holder ends
        status, msg, resp = await asyncio.wait_for(waiter, 5)
        assert status == 503 and msg["error"]["data"]["reason"] == "upstream_pool_exhausted"
        assert msg["error"]["code"] == -31003 and msg["error"]["data"]["retryAfterSeconds"] == 2
        assert resp.headers["Retry-After"] == "2"
        assert not holder.done()
        assert (await asyncio.wait_for(holder, 10))[0] == 200
        assert control(up)["requests"] == 1  # the waiter never got a connection
    finally:
        await client.close()
        gw.stop()
        up.proc.kill()


async def test_pool_waits_never_open_a_healthy_upstreams_breaker(tmp_path: Path) -> None:
    """The gateway's own pool cap is not the upstream's failure: requests that time out waiting for a pooled
    connection get 503 upstream_pool_exhausted, the breaker (which opens after 2 failures here) stays closed, and
    a request after the holder finishes is served."""
    up = start_upstream(tmp_path, module=FAULTY)
    gw = start_gateway(
        tmp_path / "gw",
        policies(
            {
                "svc": {
                    "upstreams": [{"url": up.url}],
                    "health": NO_HEALTH,
                    "retry": {"attempts": 2, "backoff_seconds": 0},
                    "pool": {"max_connections": 1, "max_wait_seconds": 0.3},
                    "timeouts": {"connect": 0.5, "first_byte": 10, "idle": 10},
                    "breaker": {"consecutive_failures": 2, "open_seconds": 30},
                }
            }
        ),
        keys=KEYS,
    )
    client = Client(gw)
    try:
        control(up, mode="slow", delay=2.5)
        holder = asyncio.create_task(client.init("svc"))
        await asyncio.sleep(0.5)
        waiters = await asyncio.gather(*(client.init("svc") for _ in range(4)))
        for status, msg, _ in waiters:
            assert status == 503 and msg["error"]["data"]["reason"] == "upstream_pool_exhausted"
        assert (await asyncio.wait_for(holder, 10))[0] == 200
        control(up, mode="ok")
        status, msg, _ = await client.init("svc")
        assert status == 200, msg  # not circuit_open
        text = (await client.http.get(f"{gw.base}/metrics")).text
        assert 'reason="pool_wait"' not in text  # one instance: nothing to retry on
        for line in text.splitlines():
            if line.startswith("mcp_gateway_breaker_state{") and 'server="svc"' in line:
                assert line.endswith(" 0.0"), line
            assert not line.startswith("mcp_gateway_breaker_transitions_total{") or 'server="svc"' not in line, line
    finally:
        await client.close()
        gw.stop()
        up.proc.kill()
