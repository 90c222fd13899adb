"""Stream robustness through the gateway: keep-alive comments on idle streams, a 16 MiB data line relayed byte for
byte, and GET + Last-Event-ID reaching the issuing upstream session (SDK server with an event store)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.harness import PYTHON, Gateway, Proc, free_port, running, start_gateway, start_upstream, wait_port
from tests.upstreams.sse_read import EventReader
from tests.upstreams.stream_server import blob_text

pytestmark = pytest.mark.e2e

KEEPALIVE = 0.3
CLIENT_IDLE_TIMEOUT = 1.0  # the "intermediary": a client that gives up on a stream silent this long
SILENCE = 2.5
HDRS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}


def _start_stream_server(tmp: Any) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc([PYTHON, "-m", "tests.upstreams.stream_server", "--port", str(port)], tmp / f"stream-{port}.log")
    proc.start()
    wait_port(port, proc=proc.popen, log=proc.log)
    return proc, f"http://127.0.0.1:{port}/mcp"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("streams")
    s1, url1 = _start_stream_server(tmp)
    s2, url2 = _start_stream_server(tmp)
    legacy = start_upstream(tmp, transport="sse")
    policies = {
        "servers.yaml": {
            "servers": {
                "stream": {"upstreams": [{"url": url1}, {"url": url2}], "owner": "acme"},
                "legacy": {"upstreams": [{"url": legacy.url}], "owner": "acme", "transport": "sse"},
            }
        },
        "tenants.yaml": {"tenants": {"acme": {"servers": ["stream", "legacy"]}}},
        "keys.yaml": {"keys": []},
        "limits.yaml": {},
        "access.yaml": {"rules": []},
    }
    gw = start_gateway(
        tmp / "gw",
        policies,
        keys={"k": {"tenant": "acme", "scopes": ["read", "write"]}},
        config={"http": {"sse_keepalive_seconds": KEEPALIVE}},
    )
    with running(gw, s1, s2, legacy):
        yield gw, url1


async def _initialize(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> str:
    params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
    async with http.post(url, json=body, headers={**headers, **HDRS}) as r:
        assert r.status == 200, await r.text()
        sid = r.headers["Mcp-Session-Id"]
        await r.read()
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    async with http.post(url, json=note, headers={**headers, **HDRS, "Mcp-Session-Id": sid}) as r:
        assert r.status == 202
    return sid


def _call(rpc_id: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}


async def _call_raw(
    url: str, headers: dict[str, str], sid: str, body: dict[str, Any], idle_timeout: float = CLIENT_IDLE_TIMEOUT
) -> bytes:
    """POST a call and read its whole SSE answer with a client that drops streams idle for `idle_timeout`."""
    timeout = aiohttp.ClientTimeout(total=None, sock_read=idle_timeout)
    async with (
        aiohttp.ClientSession(timeout=timeout, read_bufsize=2**20) as http,
        http.post(url, json=body, headers={**headers, **HDRS, "Mcp-Session-Id": sid}) as r,
    ):
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert "Content-Encoding" not in r.headers
        return await r.read()


async def test_idle_stream_outlives_client_idle_timeout(env: tuple[Gateway, str]) -> None:
    gw, direct = env
    async with aiohttp.ClientSession() as http:
        sid = await _initialize(http, gw.url("stream"), gw.auth("k"))
        direct_sid = await _initialize(http, direct, {})
    body = await _call_raw(gw.url("stream"), gw.auth("k"), sid, _call(2, "silent", {"seconds": SILENCE}))
    assert b": keepalive" in body
    assert f"slept {SILENCE}".encode() in body
    # the same call straight to the upstream (whose own pings come every 15 s) dies at the client's idle timeout:
    # without the gateway's comments the stream above would have died too
    with pytest.raises(asyncio.TimeoutError):
        await _call_raw(direct, {}, direct_sid, _call(2, "silent", {"seconds": SILENCE}))


async def test_idle_legacy_stream_gets_keepalives_between_events(env: tuple[Gateway, str]) -> None:
    gw, _ = env
    timeout = aiohttp.ClientTimeout(total=None, sock_read=CLIENT_IDLE_TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(gw.url("legacy"), headers={**gw.auth("k"), "Accept": "text/event-stream"}) as r,
    ):
        events = EventReader(r)
        endpoint = await events.next()
        assert endpoint.event == "endpoint"
        comments = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SILENCE
        while loop.time() < deadline:
            ev = await events.next(timeout=CLIENT_IDLE_TIMEOUT)
            if ev.comments == [" keepalive"] and ev.data is None:
                comments += 1
        assert comments >= 2


async def test_sixteen_mib_data_line_byte_for_byte(env: tuple[Gateway, str]) -> None:
    gw, direct = env
    size = 16 * 1024 * 1024
    async with aiohttp.ClientSession() as http:
        sid = await _initialize(http, gw.url("stream"), gw.auth("k"))
        direct_sid = await _initialize(http, direct, {})
    # making 16 MiB takes the upstream a while: this test is about the size, not idleness
    via_gateway = await _call_raw(gw.url("stream"), gw.auth("k"), sid, _call(3, "blob", {"size": size}), 60)
    straight = await _call_raw(direct, {}, direct_sid, _call(3, "blob", {"size": size}), 60)

    def data_lines(body: bytes) -> list[bytes]:
        return [line for line in body.split(b"\r\n") if line.startswith(b"data: {")]

    (line,) = data_lines(via_gateway)
    assert len(line) > size
    assert data_lines(straight) == [line]
    answer = json.loads(line[len(b"data: ") :])
    assert answer["id"] == 3
    assert answer["result"]["content"][0]["text"] == blob_text(size)


async def test_last_event_id_resumes_on_the_issuing_session(env: tuple[Gateway, str]) -> None:
    gw, _ = env
    auth = gw.auth("k")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        sid = await _initialize(http, gw.url("stream"), auth)
        resp = await http.post(
            gw.url("stream"),
            json=_call(7, "steps", {"n": 3, "delay": 0.3}),
            headers={**auth, **HDRS, "Mcp-Session-Id": sid},
        )
        assert resp.status == 200
        events = EventReader(resp)
        first = await events.next_message()
        assert first.id is not None and "step 1" in (first.data or "")
        resp.connection.transport.abort()  # type: ignore[union-attr]  # the client loses the stream
        resp.close()

        # The upstream SDK only continues a resumed stream live once it has noticed that the POST's connection is
        # gone; until then a resume replays what is stored and ends. A client then resumes again from the last
        # event it saw (as the SDK client does), so the test does the same rather than race the upstream.
        seen: list[dict[str, Any]] = []
        last_id = first.id
        for _attempt in range(20):
            headers = {**auth, **HDRS, "Mcp-Session-Id": sid, "Last-Event-ID": last_id}
            async with http.get(gw.url("stream"), headers={**headers, "Accept": "text/event-stream"}) as r:
                assert r.status == 200, await r.text()
                replay = EventReader(r)
                try:
                    while not any(m.get("id") == 7 for m in seen):
                        ev = await replay.next_message(timeout=10)
                        seen.append(json.loads(ev.data or "{}"))
                        assert ev.id is not None  # every event of a resumable stream has an id to resume from
                        last_id = ev.id
                except EOFError:
                    await asyncio.sleep(0.1)
                    continue
            break
    texts = [m["params"]["data"] for m in seen if m.get("method") == "notifications/message"]
    assert texts == ["step 2", "step 3"]
    assert seen[-1]["result"]["content"][0]["text"] == "done 3"
