"""Connections that go idle after an answer are closed after `http.keepalive_idle_seconds` (red team: one cheap
request per connection, then silence, held connections for the hour-long keep-alive timer, past every read
deadline, until the gateway ran out of file descriptors). And the per-peer cap counts an IPv6 /64 as one peer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from gateway.clientip import address_group as peer_key
from gateway.net.frontdoor import FrontDoor, ReadLimits
from tests.harness import Gateway, default_policies, running, start_gateway, start_upstream
from tests.security.support import closed, http_request, raw_connection, read_one

IDLE = 1.0
INIT = orjson.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "i", "version": "1"}},
    }
)


@pytest.fixture(params=["lean", "aiohttp"])
def gw(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    up = start_upstream(tmp_path)
    config = {"http": {"keepalive_idle_seconds": IDLE, "fast_path": request.param == "lean"}}
    gateway = start_gateway(tmp_path / "gw", default_policies(up.url), config=config)
    with running(gateway, up):
        yield gateway


@pytest.mark.e2e
@pytest.mark.parametrize("what", ["unauthenticated_post", "healthz"])
async def test_a_connection_idle_after_an_answer_is_closed(gw: Gateway, what: str) -> None:
    if what == "healthz":
        request, expected = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n\r\n".encode(), 200
    else:
        request, expected = http_request(gw.port, INIT), 401  # no credential
    async with raw_connection(gw.port) as (reader, writer):
        writer.write(request)
        await writer.drain()
        answer = await read_one(reader)
        assert answer is not None and answer.status == expected, answer
        # idle now: closed once the idle time is up (generous bound: the lean server sweeps every quarter of it)
        assert await asyncio.wait_for(closed(reader), 20 * IDLE)


@pytest.mark.e2e
async def test_a_busy_keep_alive_connection_stays_open(gw: Gateway) -> None:
    """Requests that keep coming, each within the idle time, keep their connection: POSTs (which the lean server
    serves itself when it is on; a GET would be handed to aiohttp) over more than the idle time in all."""
    async with raw_connection(gw.port) as (reader, writer):
        for _ in range(8):
            writer.write(http_request(gw.port, INIT))  # no credential: 401, and the connection stays
            await writer.drain()
            answer = await read_one(reader)
            assert answer is not None and answer.status == 401, answer
            await asyncio.sleep(IDLE / 4)


@pytest.mark.unit
def test_ipv6_peers_count_per_64_and_ipv4_mapped_per_address() -> None:
    assert peer_key("2001:db8::1") == peer_key("2001:db8::ffff:2") == "2001:db8::/64"
    assert peer_key("2001:db8:0:1::1") != peer_key("2001:db8::1")
    assert peer_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert peer_key("192.0.2.7") == "192.0.2.7"
    door = FrontDoor(ReadLimits(10, 10, 0), max_per_peer=2)
    assert door.admit("2001:db8::1") and door.admit("2001:db8::2")
    assert not door.admit("2001:db8::3")  # a third address of the same /64
    assert door.admit("2001:db8:0:1::1")
    door.release("2001:db8::2")
    assert door.admit("2001:db8::4")
    # a trusted proxy is exempt by its own address, not by its /64's (review finding)
    proxy = FrontDoor(ReadLimits(10, 10, 0), max_per_peer=1, exempt=["2001:db8::5", "192.0.2.9/32"])
    assert [proxy.admit("2001:db8::5") for _ in range(3)] == [True, True, True]
    assert proxy.admit("2001:db8::6") is False  # its /64 neighbour is not exempt
    assert [proxy.admit("::ffff:192.0.2.9") for _ in range(3)] == [True, True, True]


@pytest.mark.e2e
async def test_the_admin_listener_holds_connections_to_the_same_deadlines(tmp_path: Path) -> None:
    """`admin_listen` serves /metrics and /admin on a second port: a partial head there is refused 408 and closed at
    the head deadline as on the main port (it was a plain aiohttp server, open for the keep-alive hour: review)."""
    from tests.harness import free_port

    up = start_upstream(tmp_path)
    admin = free_port()
    config = {"admin_listen": {"host": "127.0.0.1", "port": admin}, "http": {"head_timeout_seconds": 1.0}}
    gateway = start_gateway(tmp_path / "gw", default_policies(up.url), config=config)
    with running(gateway, up):
        reader, writer = await asyncio.open_connection("127.0.0.1", admin)
        try:
            writer.write(f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{admin}\r\n".encode())  # never finished
            await writer.drain()
            answer = await asyncio.wait_for(read_one(reader), 10)
            assert answer is not None and answer.status == 408, answer
            assert await asyncio.wait_for(closed(reader), 10)
        finally:
            writer.close()
