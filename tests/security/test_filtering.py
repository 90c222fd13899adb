"""Issue 14, findings 6-8: the gateway hides tools from lists on every transport and era whatever the answer looks
like, refuses request ids already in flight, never follows a legacy `endpoint` off the upstream's origin, and
authorizes a WebSocket upgrade before it opens the upstream socket.

Real processes throughout: the gateway, SDK upstreams (WebSocket, Streamable HTTP with an event store, the example
server) and `tests.upstreams.hostile`, which answers any request with a tools list (under the request's id, in an
array, on a resumed stream) and names whatever `endpoint` a test asks for. A second hostile instance stands for
"another origin" and records every request that reaches it: it must get none. Every tenant here hides
`secret_admin_tool` (hostile, example) or `blob` (stream server).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.conftest import SHARED_REDIS_URL, _require
from tests.harness import (
    PYTHON,
    Gateway,
    Proc,
    Upstream,
    free_port,
    running,
    start_gateway,
    start_upstream,
    wait_port,
)
from tests.upstreams.sse_read import EventReader

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

HIDDEN = "secret_admin_tool"
TOKEN = "upstream-token-never-leaves-the-origin"
ACCEPT = "application/json, text/event-stream"
KEYS = {
    "rw": {"tenant": "acme", "scopes": ["read", "write"]},
    "beta": {"tenant": "beta", "scopes": ["read", "write"]},
}
# endpoints off the upstream's origin, by what differs ({A}/{B}: the hostile upstream's and the other origin's port)
FOREIGN = {
    "foreign_port": "http://127.0.0.1:{B}/messages?session_id={sid}",
    "foreign_scheme_relative": "//127.0.0.1:{B}/messages?session_id={sid}",
    "foreign_host": "http://localhost:{A}/messages?session_id={sid}",
    "foreign_scheme": "https://127.0.0.1:{A}/messages?session_id={sid}",
    "foreign_userinfo": "http://intruder:pw@127.0.0.1:{A}/messages?session_id={sid}",
}


@dataclass
class Env:
    gw: Gateway
    hostile: int  # port of the hostile upstream
    other: int  # port of the "other origin" (a second hostile instance)
    ws: int  # port of the SDK WebSocket upstream

    @property
    def audit(self) -> Path:
        return self.gw.workdir / "audit.jsonl"


def _proc(module: str, tmp: Path, name: str) -> tuple[Proc, int]:
    port = free_port()
    proc = Proc([PYTHON, "-m", module, "--port", str(port)], tmp / f"{name}-{port}.log").start()
    wait_port(port, proc=proc.popen, log=proc.log)
    return proc, port


def _policies(a: int, b: int, ws: int, example: Upstream, stream: int) -> dict[str, Any]:
    def http(url: str, **extra: Any) -> dict[str, Any]:
        return {"upstreams": [{"url": url}], "owner": "acme", **extra}

    auth = {"upstream_auth": {"type": "bearer", "secret": {"env": "UPSTREAM_TOKEN"}}}
    servers: dict[str, Any] = {
        "json": http(f"http://127.0.0.1:{a}/json/mcp"),
        "sse": http(f"http://127.0.0.1:{a}/sse/mcp"),
        "legacy": http(f"http://127.0.0.1:{a}/sse", transport="sse", **auth),
        "hws": http(f"ws://127.0.0.1:{a}/ws", transport="websocket"),
        "ws": http(f"ws://127.0.0.1:{ws}/ws", transport="websocket"),
        "example": http(example.url),
        "stream": http(f"http://127.0.0.1:{stream}/mcp"),
    }
    for name, endpoint in FOREIGN.items():
        target = quote(endpoint.format(A=a, B=b, sid="{sid}"), safe="")
        servers[name] = http(f"http://127.0.0.1:{a}/sse?endpoint={target}", transport="sse", **auth)
    return {
        "servers.yaml": {"servers": servers},
        "tenants.yaml": {
            "tenants": {
                "acme": {"servers": list(servers), "tools": {"deny": [HIDDEN, "blob"]}},
                "beta": {"servers": []},
            }
        },
        "keys.yaml": {"keys": []},
        "limits.yaml": {},
        "access.yaml": {"rules": []},
    }


@dataclass
class Upstreams:
    hostile: int
    other: int
    ws: int
    stream: int
    example: Upstream


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    tmp = tmp_path_factory.mktemp("filtering-upstreams")
    hostile, a = _proc("tests.upstreams.hostile", tmp, "hostile")
    other, b = _proc("tests.upstreams.hostile", tmp, "other-origin")
    ws, w = _proc("tests.upstreams.ws_server", tmp, "ws")
    stream, s = _proc("tests.upstreams.stream_server", tmp, "stream")
    example = start_upstream(tmp)
    with running(hostile, other, ws, stream, example):
        yield Upstreams(a, b, w, s, example)


@pytest.fixture(scope="module", params=["embedded", "redis"])
def env(
    request: pytest.FixtureRequest, upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    """The same gateway embedded and with Redis (sessions, and legacy bindings, come from Redis there)."""
    config: dict[str, Any] = {}
    if request.param == "redis":
        _require("Redis", 6379)  # the machine's shared Redis (redis_url is function-scoped)
        config["redis"] = {"url": SHARED_REDIS_URL, "key_prefix": f"secflt-{uuid.uuid4().hex}:"}
    u = upstreams
    gw = start_gateway(
        tmp_path_factory.mktemp(f"filtering-{request.param}"),
        _policies(u.hostile, u.other, u.ws, u.example, u.stream),
        keys=KEYS,
        config=config,
        env={"UPSTREAM_TOKEN": TOKEN},
    )
    with running(gw):
        yield Env(gw, u.hostile, u.other, u.ws)


# ------------------------------------------------------------------------------------------------ helpers


def _tool_names(msg: Any) -> list[str]:
    assert isinstance(msg, dict), msg
    return [t["name"] for t in msg["result"]["tools"]]


def _assert_filtered(value: Any) -> None:
    """A tools list (or an array of them) as the caller must see it: the hidden tool gone, the others kept."""
    for msg in value if isinstance(value, list) else [value]:
        names = _tool_names(msg)
        assert HIDDEN not in names and "blob" not in names, msg
        assert names, msg  # something was listed: the test would prove nothing on an empty list


async def _answer(resp: aiohttp.ClientResponse) -> list[Any]:
    """The JSON values of an answer: the body of a JSON answer, or the data of each SSE event."""
    ctype = resp.headers.get("Content-Type", "")
    if ctype.startswith("application/json"):
        return [await resp.json()]
    assert ctype.startswith("text/event-stream"), ctype
    reader = EventReader(resp)
    out: list[Any] = []
    with pytest.raises(EOFError):
        while True:
            ev = await reader.next_message()
            out.append(json.loads(ev.data or ""))
    return out


async def _audit(env: Env, match: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
    """The first audit record with all of `match` (waits for the writer's next batch)."""
    deadline = time.monotonic() + timeout
    while True:
        if env.audit.exists():
            for line in env.audit.read_text().splitlines():
                rec = json.loads(line)
                if all(rec.get(k) == v for k, v in match.items()):
                    return rec
        if time.monotonic() > deadline:
            raise AssertionError(f"no audit record with {match}")
        await asyncio.sleep(0.2)


async def _metric(env: Env, name: str, labels: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{env.gw.base}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _log(port: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/log") as r:
        data: dict[str, Any] = await r.json()
        return data


def _headers(env: Env, version: str = "2025-06-18", session: str | None = None) -> dict[str, str]:
    h = {**env.gw.auth("rw"), "Accept": ACCEPT, "Content-Type": "application/json", "MCP-Protocol-Version": version}
    if session is not None:
        h["Mcp-Session-Id"] = session
    return h


def _init(version: str = "2025-06-18") -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }


async def _session(http: aiohttp.ClientSession, env: Env, server: str, version: str = "2025-06-18") -> str:
    async with http.post(env.gw.url(server), json=_init(version), headers=_headers(env, version)) as r:
        assert r.status == 200, await r.text()
        session = r.headers["Mcp-Session-Id"]
        await r.read()
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    async with http.post(env.gw.url(server), json=note, headers=_headers(env, version, session)) as r:
        assert r.status == 202, await r.text()
    return session


def _ping(rpc_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "ping"}


# ------------------------------------------------------------------------------------------------ finding 6 (a)


async def _ws_init(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_json(_init())
    assert (await ws.receive_json(timeout=10))["id"] == 0
    await ws.send_json({"jsonrpc": "2.0", "method": "notifications/initialized"})


async def test_ws_ping_and_tools_list_with_one_id_never_show_hidden_tools(env: Env) -> None:
    """The reported attack (20/20 before): `ping` and `tools/list` with one id, back to back, on the SDK upstream.
    Each round ends with two frames of that id: the ping's answer, and the tools/list's (filtered) answer or its
    refusal as a duplicate id. No frame ever holds the hidden tool."""
    refused = 0
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            env.gw.url("ws").replace("http://", "ws://"), protocols=("mcp",), headers=env.gw.auth("rw")
        ) as ws,
    ):
        await _ws_init(ws)
        for k in range(1, 21):
            await ws.send_json(_ping(k))
            await ws.send_json({"jsonrpc": "2.0", "id": k, "method": "tools/list"})
            frames = [await ws.receive_str(timeout=10) for _ in range(2)]
            assert all(HIDDEN not in f for f in frames), frames
            for frame in map(json.loads, frames):
                assert frame["id"] == k
                if "error" in frame:
                    assert frame["error"]["data"]["reason"] == "duplicate_request_id"
                    refused += 1
                elif frame["result"]:
                    _assert_filtered(frame)
    assert refused >= 1  # the second frame arrives while the first is in flight at least once in 20


async def test_ws_request_id_in_flight_twice_is_refused(env: Env) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            env.gw.url("ws").replace("http://", "ws://"), protocols=("mcp",), headers=env.gw.auth("rw")
        ) as ws,
    ):
        await _ws_init(ws)
        slow = {"jsonrpc": "2.0", "id": 5, "method": "tools/call"}
        slow["params"] = {"name": "count", "arguments": {"n": 2, "delay": 0.5}}
        await ws.send_json(slow)
        await ws.send_json(_ping(5))
        await ws.send_json(_ping("5"))  # the SDK tells ids apart by str(id): "5" is 5 to it
        for _ in range(2):
            refusal = await ws.receive_json(timeout=10)
            assert refusal["error"]["code"] == -32600
            assert refusal["error"]["data"]["reason"] == "duplicate_request_id"
        answer = await ws.receive_json(timeout=10)
        assert answer["id"] == 5 and answer["result"]["content"][0]["text"] == "counted to 2"
        await ws.send_json(_ping(5))  # answered: the id is free again
        assert await ws.receive_json(timeout=10) == {"jsonrpc": "2.0", "id": 5, "result": {}}
    rec = await _audit(env, {"server": "ws", "reason": "duplicate_request_id", "rpc_method": "ping"})
    assert (rec["decision"], rec["stage"], rec["http_status"]) == ("refused", "session", 400)


async def test_ws_tools_list_under_any_id_or_in_an_array_is_filtered(env: Env) -> None:
    """The hostile upstream answers a `ping` with a tools list, and an `arr*` id with an array of two."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            env.gw.url("hws").replace("http://", "ws://"), protocols=("mcp",), headers=env.gw.auth("rw")
        ) as ws,
    ):
        await ws.send_json(_ping(1))
        _assert_filtered(await ws.receive_json(timeout=10))
        await ws.send_json(_ping("arr-1"))
        array = await ws.receive_json(timeout=10)
        assert isinstance(array, list) and len(array) == 2
        _assert_filtered(array)


# ------------------------------------------------------------------------------------------------ finding 6 (b), (c)


@pytest.mark.parametrize("server", ["json", "sse"])
@pytest.mark.parametrize("era", ["2025-03-26", "2025-06-18", "2026-07-28"])
async def test_streamable_tools_list_answering_any_request_is_filtered(env: Env, server: str, era: str) -> None:
    """Each era's way to get a tools list back for a request that is no tools/list: a 2025-03-26 batch (answered as
    one JSON array, or as ONE SSE event holding the array), a 2025-06-18 session request (under its id, or as an
    array), a 2026-07-28 stateless request."""
    async with aiohttp.ClientSession() as http:
        if era == "2025-03-26":
            bodies: list[Any] = [[_ping(1), _ping(2)]]
            headers = _headers(env, era)
        elif era == "2025-06-18":
            session = await _session(http, env, server)
            bodies = [_ping(1), _ping("arr-2")]
            headers = _headers(env, era, session)
        else:
            body = _ping(1)
            body["params"] = {"_meta": {"io.modelcontextprotocol/protocolVersion": era}}
            bodies = [body]
            headers = {**_headers(env, era), "Mcp-Method": "ping"}
        for body in bodies:
            async with http.post(env.gw.url(server), json=body, headers=headers) as r:
                assert r.status == 200, await r.text()
                values = await _answer(r)
            assert len(values) == 1
            if isinstance(body, list) or body["id"] == "arr-2":
                assert isinstance(values[0], list) and len(values[0]) == 2  # one event (or body) holding the array
            _assert_filtered(values[0])


@pytest.mark.parametrize("shape", ["big-pad", "big-tail", "big-head"])
async def test_json_answer_too_large_to_hold_never_carries_an_unfiltered_list(env: Env, shape: str) -> None:
    """A JSON answer past the 32 MiB the gateway holds to filter: relayed as it comes while nothing in it can be a
    tools list; refused when a list starts within the first 32 MiB (an upstream failure of a POSTed message: 200
    with the JSON-RPC error under `compat_status_200: auto`); cut when one starts after them."""
    url, headers = env.gw.url("json"), _headers(env, "2025-03-26")
    async with aiohttp.ClientSession() as http, http.post(url, json=_ping(f"{shape}-1"), headers=headers) as r:
        try:
            body = await r.read()
        except aiohttp.ClientPayloadError:
            body = None  # cut mid-answer
        status = r.status
    assert body is None or HIDDEN.encode() not in body
    if shape == "big-pad":
        assert status == 200 and body is not None and len(json.loads(body)["result"]["pad"]) == 33 * 1024 * 1024
    elif shape == "big-head":
        assert status == 200 and body is not None
        error = json.loads(body)["error"]
        assert error["data"]["reason"] == "upstream_too_large" and error["data"]["stage"] == "forward"
    else:
        assert body is None


async def test_resumed_stream_replaying_a_stored_tools_list_is_filtered(env: Env) -> None:
    """GET with `Last-Event-ID` on the SDK server with an event store: the replayed tools/list answer is filtered
    like the original (it was relayed unfiltered before)."""
    version = "2025-11-25"  # the SDK sends a priming event (with an id to resume from) from this version on
    async with aiohttp.ClientSession() as http:
        session = await _session(http, env, "stream", version)
        listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        async with http.post(env.gw.url("stream"), json=listing, headers=_headers(env, version, session)) as r:
            reader = EventReader(r)
            priming = await reader.next()
            assert priming.id and not priming.data
            first = json.loads((await reader.next_message()).data or "")
        _assert_filtered(first)
        headers = {**_headers(env, version, session), "Last-Event-ID": priming.id}
        async with http.get(env.gw.url("stream"), headers=headers) as r:
            assert r.status == 200
            replayed = await EventReader(r).next_message()
        assert replayed.id != priming.id
        _assert_filtered(json.loads(replayed.data or ""))


@pytest.mark.parametrize("resume", [True, False])
async def test_get_stream_tools_lists_are_filtered(env: Env, resume: bool) -> None:
    """The hostile upstream on a GET: a stored tools/list answer replayed after `Last-Event-ID`, or one that no
    request of the stream asked for."""
    async with aiohttp.ClientSession() as http:
        session = await _session(http, env, "sse")
        headers = _headers(env, session=session)
        if resume:
            headers["Last-Event-ID"] = "x-1"
        async with http.get(env.gw.url("sse"), headers=headers) as r:
            assert r.status == 200
            _assert_filtered(json.loads((await EventReader(r).next_message()).data or ""))


async def test_streamable_request_id_in_flight_twice_in_a_session_is_refused(env: Env) -> None:
    """Two POSTs of one session with one id: the SDK routes answers by str(id), so the second would get the first's
    answer. The second is refused (400, -32600), audited; once the first is answered the id may be used again."""
    async with aiohttp.ClientSession() as http:
        session = await _session(http, env, "example")
        headers = _headers(env, session=session)
        slow = {"jsonrpc": "2.0", "id": 7, "method": "tools/call"}
        # progress events put the answer's head on the wire at once, while the call goes on
        slow["params"] = {"name": "count", "arguments": {"n": 3, "delay": 0.5}, "_meta": {"progressToken": "p"}}
        async with http.post(env.gw.url("example"), json=slow, headers=headers) as first:
            assert first.status == 200  # its head is here and its answer is not: the request is in flight
            for dup in (_ping(7), _ping("7")):
                async with http.post(env.gw.url("example"), json=dup, headers=headers) as r:
                    assert r.status == 400
                    body = await r.json()
                assert body["id"] == dup["id"]
                assert (body["error"]["code"], body["error"]["data"]["reason"]) == (-32600, "duplicate_request_id")
            values = await _answer(first)
        assert values[-1]["result"]["content"][0]["text"] == "counted to 3"
        async with http.post(env.gw.url("example"), json=_ping(7), headers=headers) as r:
            assert r.status == 200
            assert (await _answer(r))[-1] == {"jsonrpc": "2.0", "id": 7, "result": {}}
        # a batch whose own requests share an id is refused too, in a session or not
        batch = [_ping(3), {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}]
        for h in (_headers(env, "2025-03-26", session), _headers(env, "2025-03-26")):
            async with http.post(env.gw.url("example"), json=batch, headers=h) as r:
                assert r.status == 400
                assert (await r.json())["error"]["data"]["reason"] == "duplicate_request_id"
    rec = await _audit(env, {"server": "example", "reason": "duplicate_request_id", "rpc_method": "ping"})
    assert (rec["decision"], rec["stage"], rec["http_status"]) == ("refused", "session", 400)


# ------------------------------------------------------------------------------------------------ legacy HTTP+SSE


async def _legacy_stream(http: aiohttp.ClientSession, env: Env, server: str) -> aiohttp.ClientResponse:
    resp = await http.get(env.gw.url(server), headers={**env.gw.auth("rw"), "Accept": "text/event-stream"})
    assert resp.status == 200
    return resp


async def test_legacy_stream_filters_tools_lists_under_any_id_and_in_arrays(env: Env) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await _legacy_stream(http, env, "legacy")
        async with resp:
            reader = EventReader(resp)
            endpoint = await reader.next()
            assert endpoint.event == "endpoint" and endpoint.data and endpoint.data.startswith("/mcp/legacy/")
            post = f"{env.gw.base}{endpoint.data}"
            for body in (_ping(1), _ping("arr-1")):
                async with http.post(post, json=body, headers=env.gw.auth("rw")) as r:
                    assert r.status == 202
                value = json.loads((await reader.next_message()).data or "")
                if body["id"] == "arr-1":
                    assert isinstance(value, list) and len(value) == 2
                _assert_filtered(value)


async def test_legacy_request_id_in_flight_twice_is_refused(env: Env) -> None:
    """The hostile upstream answers a tools/call on the stream only after a while: meanwhile its id is taken."""
    async with aiohttp.ClientSession() as http:
        resp = await _legacy_stream(http, env, "legacy")
        async with resp:
            reader = EventReader(resp)
            post = f"{env.gw.base}{(await reader.next()).data}"
            call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}
            async with http.post(post, json=call, headers=env.gw.auth("rw")) as r:
                assert r.status == 202
            async with http.post(post, json=_ping(3), headers=env.gw.auth("rw")) as r:
                assert r.status == 400
                assert (await r.json())["error"]["data"]["reason"] == "duplicate_request_id"
            # the stream carries the first request's answer for id 3, and no error under that id
            answer = json.loads((await reader.next_message()).data or "")
            assert answer["id"] == 3 and "error" not in answer
            _assert_filtered(answer)
            async with http.post(post, json=_ping(3), headers=env.gw.auth("rw")) as r:
                assert r.status == 202
            _assert_filtered(json.loads((await reader.next_message()).data or ""))
    await _audit(env, {"server": "legacy", "reason": "duplicate_request_id", "decision": "refused"})


# ------------------------------------------------------------------------------------------------ finding 7


@pytest.mark.parametrize("server", list(FOREIGN))
async def test_legacy_endpoint_off_the_upstream_origin_is_refused(env: Env, server: str) -> None:
    """SSRF: the upstream names an endpoint on another origin. The gateway binds nothing, ends the stream with an
    `error` event, and never sends anything there (the other origin's log stays empty); logged, counted, audited."""
    before = await _metric(env, "mcp_gateway_legacy_sse_endpoint_refused_total", f'server="{server}"')
    probe = f"ssrf-{uuid.uuid4().hex}"
    async with aiohttp.ClientSession() as http:
        resp = await _legacy_stream(http, env, server)
        async with resp:
            reader = EventReader(resp)
            first = await reader.next(timeout=10)
            if first.event == "endpoint":
                # what a client does with an endpoint: POST its requests there (the gateway then forwards them)
                async with http.post(f"{env.gw.base}{first.data}", json=_ping(probe), headers=env.gw.auth("rw")) as r:
                    await r.read()
            # no request of this client went anywhere: not to the other origin, not with other credentials
            assert (await _log(env.other))["requests"] == []
            assert not [r for r in (await _log(env.hostile))["requests"] if probe in r["body"]]
            assert first.event == "error", first.raw
            with pytest.raises(EOFError):
                await reader.next(timeout=10)
        err = json.loads(first.data or "")["error"]
        assert (err["code"], err["data"]["reason"]) == (-31006, "upstream_endpoint_refused")
        # nothing was bound: a POST for the session the upstream named finds no session
        async with http.post(
            f"{env.gw.url(server)}/messages?session_id=1", json=_ping(probe), headers=env.gw.auth("rw")
        ) as r:
            assert r.status == 404
    after = await _metric(env, "mcp_gateway_legacy_sse_endpoint_refused_total", f'server="{server}"')
    assert after == before + 1
    rec = await _audit(env, {"server": server, "reason": "upstream_endpoint_refused"})
    assert (rec["decision"], rec["stage"], rec["http_status"]) == ("error", "forward", 502)
    assert TOKEN not in env.gw.logs() and "intruder:pw" not in env.gw.logs()


async def test_legacy_relative_endpoint_on_the_upstream_origin_still_works(env: Env) -> None:
    """The control's other side: the usual relative endpoint is bound and POSTs reach the upstream, with its token."""
    probe = f"ok-{uuid.uuid4().hex}"
    async with aiohttp.ClientSession() as http:
        resp = await _legacy_stream(http, env, "legacy")
        async with resp:
            reader = EventReader(resp)
            post = f"{env.gw.base}{(await reader.next()).data}"
            async with http.post(post, json=_ping(probe), headers=env.gw.auth("rw")) as r:
                assert r.status == 202
            await reader.next_message()
    posts = [r for r in (await _log(env.hostile))["requests"] if r["path"] == "/messages" and probe in r["body"]]
    assert [p["authorization"] for p in posts] == [f"Bearer {TOKEN}"]


# ------------------------------------------------------------------------------------------------ finding 8 (WebSocket)


async def _ws_connections(env: Env) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{env.ws}/stats") as r:
        return int((await r.json())["connections"])


async def test_ws_upgrade_by_a_tenant_that_may_not_reach_the_server_opens_no_upstream_socket(env: Env) -> None:
    before = await _ws_connections(env)
    url = env.gw.url("ws").replace("http://", "ws://")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(url, protocols=("mcp",), headers=env.gw.auth("beta"))
        # another tenant's server is answered like a missing one (test_hosts.py shows the two match)
        assert info.value.status == 404
        # the same upgrade read as plain HTTP: the refusal is a well-formed JSON-RPC error
        upgrade = {
            **env.gw.auth("beta"),
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Protocol": "mcp",
        }
        async with http.get(env.gw.url("ws"), headers=upgrade) as r:
            assert r.status == 404
            body = await r.json()
        assert (body["error"]["code"], body["error"]["data"]["reason"]) == (-32601, "unknown_server")
    assert await _ws_connections(env) == before  # zero upstream connections for the refused tenant
    rec = await _audit(env, {"server": "ws", "tenant": "beta", "reason": "unknown_server"})
    assert (rec["decision"], rec["stage"], rec["http_status"]) == ("refused", "authz", 404)
    assert rec["notes"]["route_refused"] == "server_not_allowed"
    assert rec["transport"] == "websocket"
    # the tenant that may reach it still connects (and that does reach the upstream)
    async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=("mcp",), headers=env.gw.auth("rw")):
        pass
    assert await _ws_connections(env) == before + 1


# ------------------------------------------------------------------------------- lists the filter cannot parse


@pytest.mark.parametrize("server", ["json", "sse"])
async def test_a_tools_list_that_is_not_strict_json_never_reaches_the_caller(env: Env, server: str) -> None:
    """orjson refuses NaN, the Python SDK's pydantic reads it: a list the filter could not parse must not be relayed
    as it came (review finding). A JSON answer is refused (the 502 error, sent with 200 under
    `compat_status_200: auto`); an SSE event is dropped."""
    async with aiohttp.ClientSession() as http:
        session = await _session(http, env, server)
        headers = _headers(env, "2025-06-18", session)
        async with http.post(env.gw.url(server), json=_ping("nan-1"), headers=headers) as r:
            raw = await r.read()
            status = r.status
    assert HIDDEN.encode() not in raw
    if server == "json":
        error = json.loads(raw)["error"]
        assert status == 200 and error["data"]["reason"] == "upstream_protocol_error"
        assert error["data"]["stage"] == "forward"
    else:
        assert status == 200 and b"data:" not in raw  # the one event was dropped


async def test_ws_frames_the_filter_cannot_see_never_reach_the_caller(env: Env) -> None:
    """A non-strict-JSON list is dropped; a binary frame (which the SDKs parse too) ends the socket with 1003."""
    url = env.gw.url("hws").replace("http://", "ws://")
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, protocols=("mcp",), headers=env.gw.auth("rw")) as ws,
    ):
        await ws.send_json(_ping("nan-1"))
        await ws.send_json(_ping(2))
        answer = await ws.receive_json(timeout=10)  # the first frame was dropped: the next one is ping 2's
        assert answer["id"] == 2
        _assert_filtered(answer)
        await ws.send_json(_ping("bin-1"))
        msg = await ws.receive(timeout=10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING), msg
        assert ws.close_code == 1003


async def test_legacy_event_the_filter_cannot_parse_is_dropped(env: Env) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await _legacy_stream(http, env, "legacy")
        async with resp:
            reader = EventReader(resp)
            post = f"{env.gw.base}{(await reader.next()).data}"
            for body in (_ping("nan-1"), _ping(2)):
                async with http.post(post, json=body, headers=env.gw.auth("rw")) as r:
                    assert r.status == 202
            answer = json.loads((await reader.next_message()).data or "")
            assert answer["id"] == 2  # nan-1's event never came down the stream
            _assert_filtered(answer)
