"""Credentials never cross the gateway, secrets never reach the audit trail, and a tenant comes only from a
verified credential: through a real gateway process, with embedded backends and with Redis + PostgreSQL (sessions
and legacy-SSE bindings in Redis, audit rows and a key in PostgreSQL: the code paths that differ).

- Credential stripping: a client presents its key as `Authorization`, `X-API-Key`, a cookie, `Proxy-Authorization`
  and query parameters, on every transport (Streamable HTTP POST on both front doors, GET stream, DELETE; legacy
  HTTP+SSE GET and POST; WebSocket). A recording upstream (tests/security/recording_upstream.py) shows that no
  byte of the key reached it (no header, query, body or frame) and that it got the route's own `upstream_auth`.
- Audit redaction: secret-named arguments, credential-looking values and a resource URI with a password and a
  token are redacted in the audit file and in PostgreSQL rows; the client's key and JWT appear in no record and no
  log line.
- Tenant isolation: a key of one tenant cannot reach another tenant's server on any transport, whatever tenant a
  query parameter, header or the body names; such hints do not change the tenant of an allowed request either.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from mcp import ClientSession
from mcp.client.sse import sse_client

from tests.e2e.test_identity_helpers import (
    PROTOCOL,
    Answer,
    assert_refused,
    audit_record,
    initialize_msg,
    open_session,
    post,
    rpc,
)
from tests.harness import PYTHON, ROOT, Gateway, running, start_gateway
from tests.security.support import Backend, RecordingUpstream, backend, start_recording_upstream

pytestmark = pytest.mark.e2e

FORBIDDEN = -31403
# another tenant's server is answered exactly like a missing one (tests/security/test_hosts.py shows they match)
NO_SUCH_METHOD = -32601
HIDDEN = "unknown_server"
UPSTREAM_TOKEN = "route-own-upstream-bearer-0123456789"
UPSTREAM_KEY = "route-own-upstream-api-key-9876543210"
HS_SECRET = "hs-secret-of-the-audited-jwt-route-0123456789"
ISSUER = "https://issuer.test"


@dataclass
class Upstreams:
    stream: RecordingUpstream
    legacy: RecordingUpstream
    ws: RecordingUpstream


@dataclass
class Env:
    gw: Gateway
    be: Backend
    up: Upstreams
    keys: dict[str, str] = field(default_factory=dict)  # key id -> full key, PostgreSQL keys included

    def key(self, key_id: str) -> str:
        return self.keys.get(key_id) or self.gw.keys[key_id]

    def every_credential(self, marker: str, key_id: str = "user") -> dict[str, str]:
        """The client's key in every place a client might put a credential, and a marker header (forwarded like
        any other) that tells this test's requests at the upstream from health checks and other tests'."""
        key = self.key(key_id)
        return {
            "Authorization": f"Bearer {key}",
            "X-API-Key": key,
            "Cookie": f"mgw_session={key}; theme=dark",
            "Proxy-Authorization": f"Bearer {key}",
            "X-Test-Marker": marker,
        }

    def query(self, key_id: str = "user") -> str:
        key = self.key(key_id)
        return f"api_key={key}&access_token={key}&token={key}"

    def ws_url(self, server: str, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.gw.port}/mcp/{server}" + (f"?{query}" if query else "")

    def jwt(self, server: str = "jwt_audited", scope: str = "read write") -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": self.gw.url(server), "sub": "alice", "tenant": "acme", "scope": scope}
        return jwt.encode({**claims, "iat": now, "exp": now + 300}, HS_SECRET, algorithm="HS256")

    async def record(self, request_id: str) -> dict[str, Any]:
        """The audit record of one request, from the sink this backend writes (file, or PostgreSQL rows)."""
        if self.be.dsn is None:
            return await audit_record(self.gw.workdir / "audit.jsonl", request_id)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            rows = await self.be.audit_rows(request_id)
            if rows:
                assert len(rows) == 1, rows
                rec = rows[0]
                for col in ("arguments", "notes", "shadow"):
                    if isinstance(rec.get(col), str):
                        rec[col] = json.loads(rec[col])
                return rec
            await asyncio.sleep(0.1)
        raise AssertionError(f"no PostgreSQL audit row for request {request_id}")


def _server(up: RecordingUpstream, owner: str = "acme", **extra: Any) -> dict[str, Any]:
    return {"upstreams": [{"url": up.url}], "owner": owner, **extra}


def _policies(up: Upstreams) -> dict[str, Any]:
    bearer = {"type": "bearer", "secret": {"env": "UPSTREAM_TOKEN"}}
    jwt_auth = {
        "methods": ["jwt"],
        "jwt": {"issuer": ISSUER, "algorithms": ["HS256"], "hs_secret": {"env": "HS_SECRET"}},
    }
    return {
        "servers.yaml": {
            "servers": {
                "stream": _server(up.stream, upstream_auth=bearer),
                # the route's own credential in X-API-Key: the client's X-API-Key must be replaced, not kept
                "stream_hdr": _server(
                    up.stream,
                    upstream_auth={"type": "header", "header": "X-API-Key", "secret": {"env": "UPSTREAM_KEY"}},
                ),
                "legacy": _server(up.legacy, transport="sse", upstream_auth=bearer),
                "ws": _server(up.ws, transport="websocket", upstream_auth=bearer),
                "audited": _server(up.stream, audit_arguments=True),
                "jwt_audited": _server(up.stream, audit_arguments=True, auth=jwt_auth),
                "globexsrv": _server(up.stream, owner="globex"),
            }
        },
        "tenants.yaml": {
            "tenants": {
                "acme": {"servers": ["stream", "stream_hdr", "legacy", "ws", "audited", "jwt_audited"]},
                "globex": {"servers": ["globexsrv"]},
            }
        },
        "keys.yaml": {"keys": []},
        # the IP blocker would block 127.0.0.1 after a table of refusals; it is not what these tests are about
        "limits.yaml": {"ddos": {"enabled": False}, "tiers": {}},
        "access.yaml": {"rules": []},
    }


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    work = tmp_path_factory.mktemp("credentials-up")
    stream = start_recording_upstream(work)  # answers POSTs with event streams, serves GET streams
    legacy = start_recording_upstream(work, transport="sse")
    ws = start_recording_upstream(work, transport="websocket")
    with running(stream, legacy, ws):
        yield Upstreams(stream, legacy, ws)


def _pg_key(gw: Gateway, dsn: str, tenant: str) -> str:
    """A key created in the PostgreSQL key store with the CLI (the running gateway finds it without a reload)."""
    argv = [PYTHON, "-m", "gateway", "keys", "create", "--tenant", tenant, "--scopes", "read,write", "--dsn", dsn]
    argv += ["--config", str(gw.config_path)]
    # the CLI checks the tenant against the policy, which it loads as the gateway does: with the same secrets
    env = {**os.environ, "UPSTREAM_TOKEN": UPSTREAM_TOKEN, "UPSTREAM_KEY": UPSTREAM_KEY, "HS_SECRET": HS_SECRET}
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    m = re.search(r"^key: (mgw_\S+)$", out.stdout, re.MULTILINE)
    assert m, out.stdout
    return m.group(1)


@pytest.fixture(scope="module", params=["embedded", "redis_pg"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstreams: Upstreams) -> Any:
    with backend(request.param) as be:
        gw = start_gateway(
            tmp_path_factory.mktemp(f"credentials-{be.name}"),
            _policies(upstreams),
            keys={
                "user": {"tenant": "acme", "scopes": ["read", "write"]},
                "globex": {"tenant": "globex", "scopes": ["read", "write"]},
            },
            config=be.config,
            env={"UPSTREAM_TOKEN": UPSTREAM_TOKEN, "UPSTREAM_KEY": UPSTREAM_KEY, "HS_SECRET": HS_SECRET},
        )
        with running(gw):
            e = Env(gw, be, upstreams)
            if be.dsn is not None:
                e.keys["pgglobex"] = _pg_key(gw, be.dsn, "globex")
            yield e


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _assert_nothing_of(
    env: Env, up: RecordingUpstream, mark: int, marker: str, *, expect: int, auth: tuple[str, str]
) -> list[dict[str, Any]]:
    """What `up` received since `mark`: at least `expect` requests with `marker`, not a byte of the client's key
    anywhere (no header, query, body or frame of any request), no cookie or proxy credential, and the route's own
    credential in `auth`. Returns the marked requests."""
    entries = up.since(mark)
    requests = [e for e in entries if e["kind"] in ("http", "ws") and e["headers"].get("x-test-marker") == marker]
    assert len(requests) >= expect, requests
    dump = json.dumps(entries)
    for key in {env.key("user"), env.key("user").split("_", 2)[2]}:
        assert key not in dump, "the client's key reached the upstream"
    name, value = auth
    for req in requests:
        h = req["headers"]
        assert "cookie" not in h and "proxy-authorization" not in h, h
        assert h.get(name) == value, (req["method"], req["path"], h)
        other = "x-api-key" if name == "authorization" else "authorization"
        assert other not in h, h
        for param in ("api_key", "access_token", "token"):
            assert f"{param}=" not in req["query"], req["query"]
    return requests


ROUTE_BEARER = ("authorization", f"Bearer {UPSTREAM_TOKEN}")
ROUTE_HEADER = ("x-api-key", UPSTREAM_KEY)


# ------------------------------------------------------------------------------------------- credential stripping


@pytest.mark.parametrize(
    ("server", "front", "route_auth"),
    [
        pytest.param("stream", "lean", ROUTE_BEARER, id="bearer-route-lean"),
        pytest.param("stream", "aiohttp", ROUTE_BEARER, id="bearer-route-aiohttp"),
        pytest.param("stream_hdr", "lean", ROUTE_HEADER, id="x-api-key-route-lean"),
    ],
)
async def test_streamable_http_never_forwards_client_credentials(
    env: Env, http: aiohttp.ClientSession, server: str, front: str, route_auth: tuple[str, str]
) -> None:
    """POST (initialize, notification, tools/call), the GET stream and the DELETE of one session."""
    marker = uuid.uuid4().hex
    creds = env.every_credential(marker)
    # a query string sends the POST to aiohttp's server (the lean one serves only `POST /mcp/{name}`)
    url = env.gw.url(server) + (f"?{env.query()}" if front == "aiohttp" else "")
    mark = env.up.stream.mark()
    sid = await open_session(http, url, creds)
    call = rpc("tools/call", {"name": "echo", "arguments": {"text": "hello"}}, rpc_id=3)
    ans = await post(http, url, call, creds, sid)
    assert ans.status == 200 and ans.body["result"]["content"][0]["text"] == "hello", ans.body
    session = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": PROTOCOL}
    get_url = env.gw.url(server) + f"?{env.query()}"
    async with http.get(get_url, headers={**creds, **session, "Accept": "text/event-stream"}) as stream:
        assert stream.status == 200, await stream.text()
    async with http.delete(get_url, headers={**creds, **session}) as deleted:
        assert deleted.status in (200, 204), await deleted.text()
    seen = _assert_nothing_of(env, env.up.stream, mark, marker, expect=5, auth=route_auth)
    methods = [r["method"] for r in seen]
    assert {"POST", "GET", "DELETE"} <= set(methods), methods


async def test_legacy_sse_never_forwards_client_credentials(env: Env) -> None:
    """The legacy stream (GET, with the key in the query too) and the POSTs of its session (Redis binding with
    Redis + PostgreSQL)."""
    mark, marker = env.up.legacy.mark(), uuid.uuid4().hex
    url = env.gw.url("legacy") + f"?{env.query()}"
    async with sse_client(url, headers=env.every_credential(marker)) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        res = await s.call_tool("echo", {"text": "legacy"})
        assert res.content[0].text == "legacy"  # type: ignore[union-attr]
    seen = _assert_nothing_of(env, env.up.legacy, mark, marker, expect=4, auth=ROUTE_BEARER)
    paths = {r["path"] for r in seen}
    assert {"/sse", "/messages/"} <= paths, paths


async def _ws_exchange(ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> dict[str, Any]:
    await ws.send_str(json.dumps(message))
    while True:
        frame = await ws.receive(timeout=15)
        assert frame.type == aiohttp.WSMsgType.TEXT, frame
        data: dict[str, Any] = json.loads(frame.data)
        if data.get("id") == message["id"]:
            return data


async def test_websocket_never_forwards_client_credentials(env: Env, http: aiohttp.ClientSession) -> None:
    mark, marker = env.up.ws.mark(), uuid.uuid4().hex
    url = env.ws_url("ws", env.query())
    async with http.ws_connect(url, protocols=("mcp",), headers=env.every_credential(marker)) as ws:
        init = await _ws_exchange(ws, initialize_msg(1))
        assert init["result"]["serverInfo"]["name"] == "recording-upstream", init
        await ws.send_str(json.dumps(rpc("notifications/initialized", rpc_id=None)))
        call = await _ws_exchange(ws, rpc("tools/call", {"name": "echo", "arguments": {"text": "ws"}}, 2))
        assert call["result"]["content"][0]["text"] == "ws", call
    (handshake,) = _assert_nothing_of(env, env.up.ws, mark, marker, expect=1, auth=ROUTE_BEARER)
    frames = [e for e in env.up.ws.since(mark) if e["kind"] == "frame" and e["n"] == handshake["n"]]
    assert len(frames) >= 3, frames  # the messages themselves did cross


# ------------------------------------------------------------------------------------------- audit redaction

# name -> (value sent, what the audit record must hold instead)
SECRET_ARGUMENTS: dict[str, tuple[Any, Any]] = {
    "password": ("hunter2-correct-horse", "[REDACTED]"),
    "api_key": ("plain-api-key-value-77", "[REDACTED]"),
    "client_secret": ("client-secret-value-88", "[REDACTED]"),
    "refreshToken": ("refresh-token-value-99", "[REDACTED]"),
    "X-Api-Key": ("header-shaped-key-value-66", "[REDACTED]"),
    "private_key": ("private-key-material-55", "[REDACTED]"),
    "session_id": ("session-id-value-44", "[REDACTED]"),
}
SECRET_VALUES: dict[str, tuple[str, str]] = {
    "aws": ("AKIAIOSFODNN7EXAMPLE", "[REDACTED:aws_key]"),
    "github": ("ghp_" + "A1b2" * 9, "[REDACTED:github_token]"),
    "dsn": ("postgres://admin:s3cr3tpw@db.internal/app", "postgres://[REDACTED:url_password]@db.internal/app"),
    "card": ("4111 1111 1111 1111", "[REDACTED:card]"),
    "header_line": ("Authorization: Bearer abcdefghijklmnop1234", "Authorization: [REDACTED:bearer]"),
}
KEPT = {"text": "hello", "max_tokens": 5, "tokenizer": "bpe"}  # whole words only: these are no secrets


def _arguments(client_key: str, client_jwt: str) -> dict[str, Any]:
    args: dict[str, Any] = dict(KEPT)
    args.update({k: v for k, (v, _) in SECRET_ARGUMENTS.items()})
    args.update({k: v for k, (v, _) in SECRET_VALUES.items()})
    # the client's own credentials, pasted into arguments (nested, under innocent names)
    args["nested"] = {"note": f"my key is {client_key}", "list": [f"jwt {client_jwt}"], "Cookie": "sid=abcdef"}
    return args


def _check_redacted(recorded: dict[str, Any], client_key: str, client_jwt: str) -> None:
    for name, (_, redacted) in {**SECRET_ARGUMENTS, **SECRET_VALUES}.items():
        assert recorded[name] == redacted, (name, recorded[name])
    for name, value in KEPT.items():
        assert recorded[name] == value, (name, recorded[name])
    nested = recorded["nested"]
    assert nested["note"] == "my key is [REDACTED:gateway_key]", nested
    assert nested["list"] == ["jwt [REDACTED:jwt]"], nested
    assert nested["Cookie"] == "[REDACTED]", nested
    dump = json.dumps(recorded)
    for secret in [client_key, client_jwt, *(v for v, _ in SECRET_ARGUMENTS.values())]:
        assert secret not in dump, secret
    for value, _ in SECRET_VALUES.values():
        assert value not in dump, value


def _no_client_credentials_in(env: Env, texts: list[str], *credentials: str) -> None:
    for text in texts:
        for cred in credentials:
            assert cred not in text
            if cred.startswith("mgw_"):
                assert cred.split("_", 2)[2] not in text  # the secret part alone
            else:
                assert cred.rsplit(".", 1)[1] not in text  # a JWT's signature alone


@pytest.mark.parametrize("credential", ["api_key", "jwt"])
async def test_audit_redacts_secret_arguments_and_never_holds_credentials(
    env: Env, http: aiohttp.ClientSession, credential: str
) -> None:
    server = "audited" if credential == "api_key" else "jwt_audited"
    token = env.key("user") if credential == "api_key" else env.jwt()
    headers = {"Authorization": f"Bearer {token}"}
    url = env.gw.url(server)
    sid = await open_session(http, url, headers)
    key, client_jwt = env.key("user"), env.jwt()
    call = rpc("tools/call", {"name": "echo", "arguments": _arguments(key, client_jwt)}, rpc_id=9)
    ans = await post(http, url, call, headers, sid)
    assert ans.status == 200, ans.body  # the upstream answers (an argument error or the echo): it was forwarded
    rec = await env.record(ans.request_id)
    assert (rec["tool"], rec["auth_method"], rec["tenant"]) == ("echo", credential, "acme"), rec
    _check_redacted(rec["arguments"], key, client_jwt)
    # a resource URI with a password and a token in its query
    uri = f"https://reader:s3cr3tpw@files.example/doc?sig={client_jwt}"
    read = await post(http, url, rpc("resources/read", {"uri": uri}, rpc_id=10), headers, sid)
    rec2 = await env.record(read.request_id)
    assert rec2["resource_uri"] == "https://[REDACTED:url_password]@files.example/doc?sig=[REDACTED:jwt]", rec2
    # a refused call of the same caller: its record holds no credential either
    refused = await post(http, env.gw.url("globexsrv"), call, headers)
    if credential == "api_key":
        # another tenant's server answers like a missing one (no route discovery); the audit keeps the reason
        assert_refused(refused, 404, NO_SUCH_METHOD, "unknown_server")
        rec3 = await env.record(refused.request_id)
        assert rec3["arguments"] is None, rec3  # globexsrv does not opt in to recording arguments
    texts = [json.dumps(r, default=str) for r in (rec, rec2)]
    if env.be.dsn is None:
        texts.append((env.gw.workdir / "audit.jsonl").read_text())
    texts.append(env.gw.logs())  # the structured log carries every record too (audit.log_records)
    _no_client_credentials_in(env, texts, token, key, client_jwt)


async def test_credential_in_envelope_fields_never_reaches_the_audit_trail(
    env: Env, http: aiohttp.ClientSession
) -> None:
    """A credential a client puts in the JSON-RPC id, the method, the tool name or its X-Request-ID is
    pattern-redacted in the record (and so in the structured log, which prints the records) like an argument."""
    key = env.key("user")
    headers = {"Authorization": f"Bearer {key}"}
    url = env.gw.url("audited")
    sid = await open_session(http, url, headers)
    sent = [
        await post(http, url, rpc("tools/call", {"name": key, "arguments": {}}, rpc_id=key), headers, sid),
        await post(http, url, rpc(key, {}, rpc_id=2), headers, sid),
        await post(http, url, rpc("ping", rpc_id=3), {**headers, "X-Request-ID": key}, sid),
    ]
    # the second is refused by authz: 200 + the error under `compat_status_200: auto`
    assert [a.status for a in sent] == [200, 200, 200], [(a.status, a.body) for a in sent]
    assert sent[1].body["error"]["code"] == FORBIDDEN, sent[1].body
    # a last request whose record, once written, means every earlier one is written too (one writer, in order)
    last = await post(http, url, rpc("ping", rpc_id=4), headers, sid)
    await env.record(last.request_id)
    if env.be.dsn is None:
        trail = (env.gw.workdir / "audit.jsonl").read_text()
    else:
        trail = json.dumps(await env.be.audit_rows(), default=str)
    secret = key.split("_", 2)[2]
    in_trail, in_log = secret in trail, secret in env.gw.logs()
    assert not in_trail, "the client's key is in the audit trail"
    assert not in_log, "the client's key is in the log"
    # the audit journal's pre-records (written before each answer, on disk until their records are durable)
    journal = [f for f in env.gw.workdir.glob("*-journal/*.journal") if f.is_file()]
    assert journal, "no journal segment to look at: the journal is on by default"
    written = b"".join(f.read_bytes() for f in journal)
    assert b'"tools/call"' in written or b'"ping"' in written  # the pre-records of these calls are there ...
    assert secret.encode() not in written, "the client's key is in the audit journal"  # ... without the key


# ------------------------------------------------------------------------------------------- tenant isolation

TENANT_HINTS: dict[str, tuple[str, dict[str, str], dict[str, Any]]] = {
    # name -> (query, headers, params._meta): every place a confused gateway might take a tenant from
    "none": ("", {}, {}),
    "query": ("tenant=acme&tenant_id=acme", {}, {}),
    "headers": ("", {"X-Tenant": "acme", "X-Tenant-ID": "acme", "Tenant": "acme", "X-Mcp-Tenant": "acme"}, {}),
    "body": ("", {}, {"tenant": "acme", "io.modelcontextprotocol/tenant": "acme"}),
}


async def _audited_refusal(env: Env, ans: Answer, tenant: str) -> None:
    """Told `unknown_server` like a caller of a missing server; the trail keeps the real reason."""
    rec = await env.record(ans.request_id)
    assert (rec["decision"], rec["stage"], rec["reason"], rec["http_status"]) == ("refused", "authz", HIDDEN, 404)
    assert (rec["notes"] or {}).get("route_refused") == "server_not_allowed", rec
    assert rec["tenant"] == tenant and rec["server"] == "stream", rec


@pytest.mark.parametrize("hint", list(TENANT_HINTS))
async def test_other_tenants_key_cannot_reach_server_whatever_tenant_it_names(
    env: Env, http: aiohttp.ClientSession, hint: str
) -> None:
    """On both front doors; with Redis + PostgreSQL also with a key from the PostgreSQL key store."""
    query, extra, meta = TENANT_HINTS[hint]
    intruders = ["globex"] + (["pgglobex"] if env.be.dsn is not None else [])
    mark = env.up.stream.mark()
    refused: list[str] = []
    for intruder in intruders:
        headers = {"Authorization": f"Bearer {env.key(intruder)}", **extra}
        for front in ("lean", "aiohttp"):
            q = "&".join(p for p in (query, "via=aiohttp" if front == "aiohttp" else "") if p)
            url = env.gw.url("stream") + (f"?{q}" if q else "")
            for msg in (initialize_msg(), rpc("tools/list", {"_meta": meta} if meta else None, rpc_id=2)):
                ans = await post(http, url, msg, headers)
                assert_refused(ans, 404, NO_SUCH_METHOD, HIDDEN)
                await _audited_refusal(env, ans, "globex")
                refused.append(ans.request_id)
    reached = [r for r in env.up.stream.requests_since(mark) if r["headers"].get("x-request-id") in refused]
    assert reached == [], reached


async def test_other_tenants_key_cannot_reach_server_over_legacy_sse(env: Env, http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": f"Bearer {env.key('globex')}", "X-Tenant": "acme", "Accept": "text/event-stream"}
    mark = env.up.legacy.mark()
    async with http.get(env.gw.url("legacy") + "?tenant=acme", headers=headers) as r:
        assert r.status == 404, await r.text()
        body = await r.json()
    assert (body["error"]["code"], body["error"]["data"]["reason"]) == (NO_SUCH_METHOD, HIDDEN), body
    assert [e for e in env.up.legacy.since(mark) if e["kind"] == "http" and e["path"] == "/sse"] == []


async def test_other_tenants_key_cannot_use_a_websocket_server(env: Env, http: aiohttp.ClientSession) -> None:
    """Refused at the upgrade, or (today) on every frame; no frame of the intruder ever reaches the upstream.
    Whether the upstream socket is opened at all is issue 14 finding 8 (authorize before connecting)."""
    headers = {"Authorization": f"Bearer {env.key('globex')}", "X-Tenant": "acme"}
    mark = env.up.ws.mark()
    try:
        async with http.ws_connect(env.ws_url("ws", "tenant=acme"), protocols=("mcp",), headers=headers) as ws:
            for i, msg in enumerate((initialize_msg(1), rpc("tools/list", rpc_id=2))):
                answer = await _ws_exchange(ws, msg)
                err = answer["error"]
                assert (err["code"], err["data"]["reason"]) == (NO_SUCH_METHOD, HIDDEN), (i, answer)
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 404, exc
    assert [e for e in env.up.ws.since(mark) if e["kind"] == "frame"] == []


async def test_tenant_hints_do_not_change_an_allowed_callers_tenant(env: Env, http: aiohttp.ClientSession) -> None:
    """The caller's own server still works, recorded under the caller's tenant, and the hints cannot open another
    tenant's server to it."""
    hints = {"X-Tenant": "globex", "X-Tenant-ID": "globex"}
    headers = {"Authorization": f"Bearer {env.key('user')}", **hints}
    url = env.gw.url("stream") + "?tenant=globex"
    ans = await post(http, url, rpc("initialize", {**initialize_msg()["params"], "_meta": {"tenant": "globex"}}))
    assert ans.status == 401  # no credential at all: nothing else makes a caller
    ok = await post(http, url, initialize_msg(), headers)
    assert ok.status == 200, ok.body
    rec = await env.record(ok.request_id)
    assert (rec["tenant"], rec["key_id"], rec["decision"]) == ("acme", "user", "allowed"), rec
    other = await post(http, env.gw.url("globexsrv") + "?tenant=globex", initialize_msg(), headers)
    assert_refused(other, 404, NO_SUCH_METHOD, HIDDEN)
    rec2 = await env.record(other.request_id)
    assert rec2["tenant"] == "acme", rec2
