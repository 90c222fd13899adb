"""Host, Origin and listener exposure, through real gateway processes (issue 14 findings 5 and 8, issue 16 item 5).

- DNS rebinding: a page whose name now points at the gateway sends a foreign `Host`; it is refused (421, audited)
  on every path: MCP routes on the lean server and on aiohttp's, `/metrics`, `/admin/*`, health, unknown paths.
- Loopback names are one origin: `localhost`, `127.0.0.1` and `[::1]` with the listening port are served as Host and
  accepted as Origin; a foreign Origin is refused (403); a request without Origin (non-browser) is served.
- `admin_listen` moves `/metrics` and `/admin/*` to their own listener (also with `workers: 2`, bound by worker 0).
- Route discovery: an unknown route, a real one and another tenant's are answered alike (401 unauthenticated, the
  same 404 for a key of another tenant), the truth kept in the audit record.
- The shipped deployment (Docker HEALTHCHECK, Kubernetes probes and Prometheus scrapes, compose) sends Hosts the
  shipped settings serve.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from multidict import CIMultiDict

from gateway.admin.problem import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_PREFIX
from gateway.hosts import HostPolicy
from gateway.settings import load_settings
from gateway.version import VERSION
from tests.e2e.test_identity_helpers import (
    ACCEPT,
    PROTOCOL,
    Answer,
    audit_record,
    initialize_msg,
)
from tests.harness import ROOT, Gateway, Upstream, free_port, metric_sample, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e

MISDIRECTED = (421, -31403, "bad_host")
BAD_ORIGIN = (403, -31403, "bad_origin")
EVIL = "rebind.attacker.example"
# headers that differ between any two answers (time, per-request id, connection handling)
VOLATILE = frozenset({"date", "x-request-id", "connection", "keep-alive", "server"})


@dataclass
class Env:
    gw: Gateway
    up: Upstream

    @property
    def audit(self) -> Path:
        return self.gw.workdir / "audit.jsonl"

    def h(self, key_id: str) -> dict[str, str]:
        return self.gw.auth(key_id)


def policies(upstream_url: str) -> dict[str, Any]:
    return {
        "servers.yaml": {
            "servers": {
                "example": {"upstreams": [{"url": upstream_url}], "owner": "acme"},
                # another tenant's routes: the same length as the made-up names compared with them below
                "globexsrv": {"upstreams": [{"url": upstream_url}], "owner": "globex"},
                "oauthsrv": {
                    "upstreams": [{"url": upstream_url}],
                    "owner": "acme",
                    "auth": {
                        "methods": ["jwt"],
                        "jwt": {
                            "issuer": "https://idp.example",
                            "algorithms": ["HS256"],
                            "hs_secret": {"env": "OAUTH_HS_SECRET"},
                            "authorization_servers": ["https://idp.example"],
                        },
                    },
                },
                "legacy": {
                    "upstreams": [{"url": "http://127.0.0.1:9/sse"}],  # never reached by these tests
                    "transport": "sse",
                    "owner": "globex",
                    "health": {"enabled": False},
                },
            }
        },
        "tenants.yaml": {
            "tenants": {"acme": {"servers": ["example", "oauthsrv"]}, "globex": {"servers": ["globexsrv", "legacy"]}}
        },
        "keys.yaml": {"keys": []},
        # the IP blocker would block 127.0.0.1 after a series of refusals; it is not what these tests are about
        "limits.yaml": {"ddos": {"enabled": False}, "tiers": {}},
        "access.yaml": {"rules": []},
    }


GATEWAY_ENV = {"OAUTH_HS_SECRET": "hs-secret-for-the-oauth-metadata-route-0123456789"}
KEYS = {
    "acme": {"tenant": "acme", "scopes": ["read", "write"]},
    "globex": {"tenant": "globex", "scopes": ["read", "write"]},
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("hosts")
    up = start_upstream(work)
    gw = start_gateway(work / "gw", policies(up.url), keys=KEYS, env=GATEWAY_ENV)
    with running(gw, up):
        yield Env(gw, up)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        yield s


async def request(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    *,
    chunked: bool = False,
) -> Answer:
    """One raw request with a fresh X-Request-ID (its audit record's key)."""
    rid = uuid.uuid4().hex
    h = {"Accept": ACCEPT, "MCP-Protocol-Version": PROTOCOL, "X-Request-ID": rid, **(headers or {})}
    data: Any = body
    if body is not None:
        h.setdefault("Content-Type", "application/json")
        if chunked:

            async def chunks() -> AsyncIterator[bytes]:
                yield body

            data = chunks()  # no Content-Length: the lean server hands the connection to aiohttp
    async with http.request(method, url, headers=h, data=data) as r:
        text = await r.text()
    if r.headers.get("Content-Type", "").startswith("text/event-stream"):
        # the last `data:` line of the stream holds the JSON-RPC answer
        text = ([line[5:] for line in text.splitlines() if line.startswith("data:")] or [""])[-1]
    try:
        parsed: Any = json.loads(text) if text else None
    except ValueError:
        parsed = text
    return Answer(r.status, CIMultiDict(r.headers), parsed, rid)


INIT = json.dumps(initialize_msg()).encode()


def assert_error(ans: Answer, expected: tuple[int, int, str]) -> None:
    status, code, reason = expected
    assert ans.status == status, (ans.status, ans.body)
    assert ans.headers.get("Content-Type", "").startswith("application/json"), ans.headers
    assert ans.headers.get("Cache-Control") == "no-store"
    assert ans.body["jsonrpc"] == "2.0", ans.body
    assert (ans.error["code"], ans.error["data"]["reason"]) == (code, reason), ans.body


def assert_problem(ans: Answer, expected: tuple[int, int, str]) -> None:
    """The same refusal on an admin API path: RFC 9457 problem details instead of a JSON-RPC envelope (the
    JSON-RPC code has no place there; the type names the reason)."""
    status, _, reason = expected
    assert ans.status == status, (ans.status, ans.body)
    assert ans.headers.get("Content-Type") == PROBLEM_CONTENT_TYPE, ans.headers
    assert ans.headers.get("Cache-Control") == "no-store"
    assert "jsonrpc" not in ans.body, ans.body
    assert (ans.body["status"], ans.body["reason"]) == (status, reason), ans.body
    assert ans.body["type"] == PROBLEM_TYPE_PREFIX + reason and ans.body["title"] and ans.body["detail"], ans.body


def assert_refused(ans: Answer, expected: tuple[int, int, str], url: str) -> None:
    """`assert_error`, or `assert_problem` for a path of the admin API."""
    if "/admin/" in url:
        assert_problem(ans, expected)
    else:
        assert_error(ans, expected)


async def assert_audited(env: Env, ans: Answer, reason: str, **notes: str) -> dict[str, Any]:
    rec = await audit_record(env.audit, ans.request_id)
    assert (rec["decision"], rec["reason"], rec["http_status"]) == ("refused", reason, ans.status), rec
    for k, v in notes.items():
        assert rec["notes"][k] == v, rec
    return rec


# ------------------------------------------------------------------------------------------------ DNS rebinding


async def test_dns_rebinding_host_is_refused_on_every_path(env: Env, http: aiohttp.ClientSession) -> None:
    gw = env.gw
    evil = f"{EVIL}:{gw.port}"
    # a rebinding page does not send Origin on same-origin GETs: the Host alone must refuse them
    cases: list[tuple[str, str, bytes | None, bool]] = [
        ("POST", gw.url(), INIT, False),  # the lean server's path
        ("POST", gw.url(), INIT, True),  # chunked: aiohttp's path
        ("GET", gw.url(), None, False),
        ("DELETE", gw.url(), None, False),
        ("GET", f"{gw.base}/mcp/example/sse", None, False),
        ("GET", f"{gw.base}/metrics", None, False),
        ("GET", f"{gw.base}/admin/servers", None, False),
        ("GET", f"{gw.base}/admin/keys", None, False),
        ("POST", f"{gw.base}/admin/reload", None, False),
        ("GET", f"{gw.base}/healthz", None, False),
        ("GET", f"{gw.base}/readyz", None, False),
        ("GET", f"{gw.base}/.well-known/oauth-protected-resource/mcp/example", None, False),
        ("GET", f"{gw.base}/no/such/path", None, False),
    ]
    for method, url, body, chunked in cases:
        # with a valid credential too: the Host check does not depend on who calls
        ans = await request(http, method, url, {"Host": evil, **env.h("acme")}, body, chunked=chunked)
        assert_refused(ans, MISDIRECTED, url)
        assert "mcp_gateway" not in json.dumps(ans.body), (method, url)
        await assert_audited(env, ans, "bad_host", host=evil)
    # a rebinding name that merely starts with a served one is still a foreign name
    for host in (f"127.0.0.1.{EVIL}:{gw.port}", f"localhost.{EVIL}:{gw.port}", f"localhost:{gw.port + 1}"):
        assert_error(await request(http, "GET", f"{gw.base}/metrics", {"Host": host}), MISDIRECTED)


async def test_loopback_host_aliases_are_served(env: Env, http: aiohttp.ClientSession) -> None:
    gw = env.gw
    for name in ("127.0.0.1", "localhost", "[::1]", "LOCALHOST"):
        host = f"{name}:{gw.port}"
        init = await request(http, "POST", gw.url(), {"Host": host, **env.h("acme")}, INIT)
        assert init.status == 200 and init.body["result"]["protocolVersion"], (host, init.body)
        metrics = await request(http, "GET", f"{gw.base}/metrics", {"Host": host})
        assert metrics.status == 200 and "mcp_gateway_requests_total" in metrics.body, host
        health = await request(http, "GET", f"{gw.base}/healthz", {"Host": host})
        assert (health.status, health.body) == (200, {"status": "ok", "version": VERSION}), host


async def test_origin_localhost_is_accepted_for_a_gateway_at_127_0_0_1(env: Env, http: aiohttp.ClientSession) -> None:
    gw = env.gw  # listens on 127.0.0.1 with the default public URL http://127.0.0.1:<port>
    for origin in (f"http://localhost:{gw.port}", f"http://127.0.0.1:{gw.port}", f"http://[::1]:{gw.port}", None):
        headers = {**env.h("acme"), **({"Origin": origin} if origin else {})}
        ans = await request(http, "POST", gw.url(), headers, INIT)
        assert ans.status == 200, (origin, ans.body)
        chunked = await request(http, "POST", gw.url(), headers, INIT, chunked=True)
        assert chunked.status == 200, (origin, chunked.body)


async def test_evil_origin_is_refused(env: Env, http: aiohttp.ClientSession) -> None:
    gw = env.gw
    for origin in ("https://evil.example", f"http://{EVIL}:{gw.port}", "null", f"http://localhost:{gw.port + 1}"):
        headers = {"Origin": origin, **env.h("acme")}
        for method, url, body, chunked in (
            ("POST", gw.url(), INIT, False),
            ("POST", gw.url(), INIT, True),
            ("GET", gw.url(), None, False),
            ("GET", f"{gw.base}/metrics", None, False),
            ("POST", f"{gw.base}/admin/reload", None, False),
        ):
            ans = await request(http, method, url, headers, body, chunked=chunked)
            assert_refused(ans, BAD_ORIGIN, url)
            await assert_audited(env, ans, "bad_origin", origin=origin)


async def test_oauth_metadata_is_readable_from_any_origin_but_not_through_rebinding(
    env: Env, http: aiohttp.ClientSession
) -> None:
    """RFC 9728 metadata is public and CORS-open for browser-based OAuth clients of any origin; the Host check
    still applies to it."""
    gw = env.gw
    url = f"{gw.base}/.well-known/oauth-protected-resource/mcp/oauthsrv"
    ans = await request(http, "GET", url, {"Origin": "https://inspector.example"})
    assert ans.status == 200 and ans.body["resource"] == f"{gw.base}/mcp/oauthsrv", ans.body
    assert ans.headers["Access-Control-Allow-Origin"] == "*"
    rebound = await request(http, "GET", url, {"Origin": "https://inspector.example", "Host": f"{EVIL}:{gw.port}"})
    assert_error(rebound, MISDIRECTED)


async def test_conformance_dns_rebinding_probe_is_refused_and_localhost_served(
    env: Env, http: aiohttp.ClientSession
) -> None:
    """The official conformance suite's dns-rebinding scenario: Host and Origin set to the same value."""
    gw = env.gw
    for value, ok in ((EVIL, False), (f"localhost:{gw.port}", True), (f"127.0.0.1:{gw.port}", True)):
        headers = {"Host": value, "Origin": f"http://{value}", **env.h("acme")}
        ans = await request(http, "POST", f"http://localhost:{gw.port}/mcp/example", headers, INIT)
        assert (200 <= ans.status < 300) == ok, (value, ans.status, ans.body)
        if ok:
            sid = ans.headers["Mcp-Session-Id"]
            note = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()
            done = await request(http, "POST", gw.url(), {**headers, "Mcp-Session-Id": sid}, note)
            assert done.status == 202, done.body


async def raw_exchange(port: int, head: str, body: bytes = b"") -> tuple[int, Any]:
    """One request written byte for byte (aiohttp's client cannot send an absolute-form target); the answer's
    status and parsed JSON body. `Connection: close` makes the end of the answer the end of the stream."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    fields, _, payload = rest.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in fields.lower():
        body = b""
        while payload:
            size, _, payload = payload.partition(b"\r\n")
            n = int(size.split(b";")[0], 16)
            body, payload = body + payload[:n], payload[n + 2 :]
        payload = body
    if b"content-type: text/event-stream" in fields.lower():
        payload = ([line[5:] for line in payload.splitlines() if line.startswith(b"data:")] or [b""])[-1]
    return int(status_line.split()[1]), json.loads(payload) if payload.strip() else None


async def test_absolute_form_target_authority_is_held_to_the_host_list(env: Env) -> None:
    """RFC 9112 3.2.2: with an absolute-form target a server uses the target's authority, not `Host`. A proxy in
    front that routed on the served Host while the gateway's framework saw a foreign authority (or the reverse)
    must not slip past the rebinding check: the target's authority is checked as `Host` is."""
    gw = env.gw
    auth = env.h("acme")["Authorization"]

    def head(target: str, host: str, rid: str, length: int) -> str:
        return (
            f"POST {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nX-Request-ID: {rid}\r\n"
            f"Content-Type: application/json\r\nAccept: {ACCEPT}\r\nMCP-Protocol-Version: {PROTOCOL}\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
        )

    served = f"127.0.0.1:{gw.port}"
    foreign = f"http://{EVIL}:{gw.port}/mcp/example"
    rid = uuid.uuid4().hex
    status, body = await raw_exchange(gw.port, head(foreign, served, rid, len(INIT)), INIT)
    assert status == 421, (status, body)
    assert (body["error"]["code"], body["error"]["data"]["reason"]) == (-31403, "bad_host"), body
    rec = await audit_record(env.audit, rid)
    assert (rec["reason"], rec["notes"]["target"]) == ("bad_host", foreign), rec
    # userinfo in the target does not make a foreign authority a served one
    status, _ = await raw_exchange(gw.port, head(f"http://{served}@{EVIL}/mcp/example", served, "u1", len(INIT)), INIT)
    assert status == 421
    # the served authority in absolute form is served, like origin form
    status, body = await raw_exchange(gw.port, head(f"http://{served}/mcp/example", served, "ok1", len(INIT)), INIT)
    assert status == 200, (status, body)


# ------------------------------------------------------------------------------------------------ route discovery


def comparable(ans: Answer, name: str | None = None) -> tuple[int, dict[str, str], str]:
    """What a caller can compare between two answers: status, headers that are not per-request, body."""
    headers = {k.lower(): v for k, v in ans.headers.items() if k.lower() not in VOLATILE}
    body = json.dumps(ans.body, sort_keys=True)
    if name is not None:
        body = body.replace(name, "NAME")
    return ans.status, headers, body


async def test_unknown_route_answers_like_a_real_one_when_unauthenticated(
    env: Env, http: aiohttp.ClientSession
) -> None:
    gw = env.gw
    bad_key = {"Authorization": "Bearer mgw_nosuchkey_" + "x" * 32}
    for headers in ({}, bad_key):
        for method, path, body in (
            ("POST", "/mcp/{}", INIT),
            ("GET", "/mcp/{}", None),
            ("DELETE", "/mcp/{}", None),
            ("GET", "/mcp/{}/sse", None),
        ):
            real_name = "legacy" if path.endswith("/sse") else "example"
            real = await request(http, method, gw.base + path.format(real_name), headers, body)
            made_up = await request(http, method, gw.base + path.format("nosuchsrv"), headers, body)
            assert real.status == 401, (method, path, real.body)
            assert comparable(made_up) == comparable(real), (method, path)
            if body is not None:
                assert made_up.body["id"] == 1  # the id is echoed, as on a real route
            rec = await assert_audited(env, made_up, real.body["error"]["data"]["reason"])
            assert rec["stage"] == "authn"


async def test_bad_session_ids_on_legacy_routes_do_not_reveal_them(env: Env, http: aiohttp.ClientSession) -> None:
    """A malformed or doubled session id on a legacy route used to be refused before authentication (400 / 404),
    while a made-up route said 401: an anonymous caller could list legacy routes (review finding)."""
    from multidict import CIMultiDict

    gw = env.gw
    doubled = CIMultiDict([("Accept", "text/event-stream"), ("Mcp-Session-Id", "a"), ("Mcp-Session-Id", "b")])
    for name in ("legacy", "nosuchsrv"):
        async with http.get(f"{gw.base}/mcp/{name}/sse", headers=doubled) as r:
            assert r.status == 401, (name, await r.text())
            assert (await r.json())["error"]["data"]["reason"] == "missing_credentials"
        url = f"{gw.base}/mcp/{name}/messages?session_id=%01"
        async with http.post(url, data=INIT, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 401, (name, await r.text())
            assert (await r.json())["error"]["data"]["reason"] == "missing_credentials"


async def test_foreign_tenant_server_answers_like_a_missing_one(env: Env, http: aiohttp.ClientSession) -> None:
    gw = env.gw
    acme = env.h("acme")
    for method, path, foreign, body in (
        ("POST", "/mcp/{}", "globexsrv", INIT),
        ("GET", "/mcp/{}", "globexsrv", None),
        ("DELETE", "/mcp/{}", "globexsrv", None),
        ("POST", "/mcp/{}", "legacy", INIT),
        ("GET", "/mcp/{}/sse", "legacy", None),
    ):
        missing_name = "nosuchsrv"[: len(foreign)]  # the same length: even Content-Length must not differ
        assert missing_name not in policies("x")["servers.yaml"]["servers"]
        theirs = await request(http, method, gw.base + path.format(foreign), acme, body)
        missing = await request(http, method, gw.base + path.format(missing_name), acme, body)
        assert_error(theirs, (404, -32601, "unknown_server"))
        assert comparable(theirs, foreign) == comparable(missing, missing_name), (method, path, missing.body)
        # the audit trail keeps what the caller is not told
        rec = await assert_audited(env, theirs, "unknown_server", route_refused="server_not_allowed")
        assert (rec["stage"], rec["tenant"], rec["server"]) == ("authz", "acme", foreign)
        await assert_audited(env, missing, "unknown_server", route_refused="unknown_server")
    # the owner still reaches its servers
    ok = await request(http, "POST", gw.url("globexsrv"), env.h("globex"), INIT)
    assert ok.status == 200, ok.body


# ------------------------------------------------------------------------------------------------ explicit settings


async def test_allowed_hosts_and_origins_settings_extend_the_defaults(
    tmp_path: Path, env: Env, http: aiohttp.ClientSession
) -> None:
    gw = start_gateway(
        tmp_path / "gw",
        policies(env.up.url),
        keys=KEYS,
        config={"listen": {"public_url": "https://mcp.example.com"}},
        env={
            **GATEWAY_ENV,
            "MGW_ALLOWED_HOSTS": "gateway.internal:*, 10.0.0.0/8",
            "MGW_ALLOWED_ORIGINS": "https://app.example",
        },
    )
    with running(gw):
        url = f"{gw.base}/metrics"
        for host in ("mcp.example.com", "gateway.internal:9999", "10.1.2.3:8080", f"localhost:{gw.port}"):
            assert (await request(http, "GET", url, {"Host": host})).status == 200, host
        for host in (f"{EVIL}:{gw.port}", "10.1.2.3.attacker.example", f"127.0.0.2:{gw.port}"):
            assert_error(await request(http, "GET", url, {"Host": host}), MISDIRECTED)
        for origin in ("https://app.example", "https://mcp.example.com"):
            ans = await request(http, "POST", gw.url(), {"Origin": origin, **gw.auth("acme")}, INIT)
            assert ans.status == 200, (origin, ans.body)
        for origin in ("http://app.example", "https://app.example:8443", "http://mcp.example.com"):
            bad = await request(http, "POST", gw.url(), {"Origin": origin, **gw.auth("acme")}, INIT)
            assert_error(bad, BAD_ORIGIN)


# ------------------------------------------------------------------------------------------------ admin listener


async def test_admin_listen_serves_metrics_and_admin_apart_from_mcp(
    tmp_path: Path, env: Env, http: aiohttp.ClientSession
) -> None:
    admin_port = free_port()
    gw = start_gateway(
        tmp_path / "gw", policies(env.up.url), keys=KEYS, config={"admin_listen": {"port": admin_port}}, env=GATEWAY_ENV
    )
    admin = f"http://127.0.0.1:{admin_port}"
    with running(gw):
        # the main listener: MCP and health as before; /metrics and /admin/* answered like paths that do not exist
        assert (await request(http, "POST", gw.url(), gw.auth("acme"), INIT)).status == 200
        assert (await request(http, "GET", f"{gw.base}/healthz")).status == 200
        for method, path in (("GET", "/metrics"), ("GET", "/admin/keys"), ("POST", "/admin/reload")):
            hidden = await request(http, method, gw.base + path, gw.auth("acme"))
            assert_refused(hidden, (404, -32601, "not_found"), path)
            rec = await audit_record(gw.workdir / "audit.jsonl", hidden.request_id)
            assert (rec["decision"], rec["reason"], rec["http_status"]) == ("refused", "not_found", 404), rec
        # the admin listener: /metrics and /admin/* (which then authenticate), nothing else
        metrics = await request(http, "GET", f"{admin}/metrics")
        assert metrics.status == 200 and "mcp_gateway_requests_total" in metrics.body
        keys = await request(http, "GET", f"{admin}/admin/keys")
        assert_problem(keys, (401, -31401, "missing_credentials"))
        for method, path, body in (("POST", "/mcp/example", INIT), ("GET", "/healthz", None), ("GET", "/readyz", None)):
            assert_error(await request(http, method, admin + path, gw.auth("acme"), body), (404, -32601, "not_found"))
        # and it checks Host like the main one: its own port on loopback names, nothing foreign
        assert (await request(http, "GET", f"{admin}/metrics", {"Host": f"localhost:{admin_port}"})).status == 200
        assert_error(await request(http, "GET", f"{admin}/metrics", {"Host": f"{EVIL}:{admin_port}"}), MISDIRECTED)
        assert gw.stop() == 0  # both listeners drain and close cleanly


async def worker_started_pids(gw: Gateway) -> dict[int, list[int]]:
    """worker index -> pids the supervisor started for it, in order (from its log)."""
    out: dict[int, list[int]] = {}
    for line in gw.logs().splitlines():
        if '"worker started"' in line:
            rec = json.loads(line)
            out.setdefault(int(rec["worker"]), []).append(int(rec["pid"]))
    return out


async def wait_for(cond: Any, what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within}s: {what}")


async def test_admin_listen_is_bound_once_with_workers(
    tmp_path: Path, env: Env, http: aiohttp.ClientSession, redis_url: str
) -> None:
    admin_port = free_port()
    prefix = f"mgw-test-hosts-{secrets.token_hex(4)}:"
    gw = start_gateway(
        tmp_path / "gw",
        policies(env.up.url),
        keys=KEYS,
        config={"workers": 2, "admin_listen": {"port": admin_port}, "redis": {"url": redis_url, "key_prefix": prefix}},
        env=GATEWAY_ENV,
    )
    admin = f"http://127.0.0.1:{admin_port}"

    async def admin_up() -> bool:
        try:
            return (await request(http, "GET", f"{admin}/metrics")).status == 200
        except aiohttp.ClientError:
            return False

    with running(gw):
        await wait_for(admin_up, "the admin listener")
        await wait_for(lambda: _both_workers(gw), "two workers")
        for _ in range(12):  # one connection each: the kernel spreads them over both workers
            async with aiohttp.ClientSession() as one:
                assert (await request(one, "POST", gw.url(), gw.auth("acme"), INIT)).status == 200
                assert_error(await request(one, "GET", f"{gw.base}/metrics"), (404, -32601, "not_found"))
        text = (await request(http, "GET", f"{admin}/metrics")).body
        served = {w: metric_sample(text, "mcp_gateway_worker_requests_total", worker=w) for w in ("0", "1")}
        assert sum(served.values()) >= 24 and all(n > 0 for n in served.values()), served  # both workers' counts
        assert gw.logs().count('"admin listening"') == 1  # worker 0 only

        # worker 0 dies: the supervisor restarts it and the new worker 0 binds the admin listener again
        (first,) = (await worker_started_pids(gw))[0]
        os.kill(first, signal.SIGKILL)

        async def rebound() -> bool:
            return len((await worker_started_pids(gw)).get(0, [])) == 2 and await admin_up()

        await wait_for(rebound, "worker 0 restarted with its admin listener")
        assert gw.logs().count('"admin listening"') == 2


async def _both_workers(gw: Gateway) -> bool:
    started = await worker_started_pids(gw)
    return len(started) == 2 and gw.logs().count('"gateway listening"') == 2


# ------------------------------------------------------------------------------------------------ shipped deployment


def _deploy_policy(config_text: str, env: dict[str, str], tmp_path: Path) -> HostPolicy:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config_text)
    return HostPolicy.from_settings(load_settings(cfg, env=env))


def test_shipped_deployments_probe_and_scrape_with_served_hosts(tmp_path: Path) -> None:
    deploy = ROOT / "deploy"
    # Docker: the image's config and environment; the HEALTHCHECK asks 127.0.0.1 on MGW_PORT
    dockerfile = (deploy / "Dockerfile").read_text()
    assert "http://127.0.0.1:%s/healthz" in dockerfile and "MGW_PORT=8080" in dockerfile
    image = _deploy_policy((deploy / "config" / "gateway.yaml").read_text(), {"MGW_PORT": "8080"}, tmp_path)
    assert image.host_allowed("127.0.0.1:8080")

    # compose: Prometheus scrapes each replica by its service name
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())
    prom = yaml.safe_load((deploy / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    for target in targets:
        service = compose["services"][target.split(":")[0]]
        service_env = {k: str(v) for k, v in service["environment"].items() if "${" not in str(v)}
        service_env["MGW_PORT"] = "8080"
        served = _deploy_policy((deploy / "config" / "gateway.yaml").read_text(), service_env, tmp_path)
        assert served.host_allowed(target), target
        # and the published port on the docker host, as the compose file's comment tells users to connect
        published = service["ports"][0].split(":")[0]
        assert served.host_allowed(f"localhost:{published}"), target

    # Kubernetes: probes from the kubelet, Prometheus scrapes by pod IP (prometheus.io annotations)
    docs = list(yaml.safe_load_all((deploy / "k8s" / "configmap-config.yaml").read_text()))
    config_text = docs[0]["data"]["config.yaml"]
    deployment = yaml.safe_load((deploy / "k8s" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    k8s_env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    k8s = _deploy_policy(config_text, k8s_env, tmp_path)
    port = int(k8s_env["MGW_PORT"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        headers = {h["name"].lower(): h["value"] for h in container[probe]["httpGet"].get("httpHeaders", [])}
        # without a Host header the kubelet sends the pod IP
        host = headers.get("host", f"10.244.1.17:{port}")
        assert k8s.host_allowed(host), (probe, host)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert k8s.host_allowed(f"10.244.1.17:{annotations['prometheus.io/port']}")
    assert k8s.host_allowed("mcp.example.com")  # the public URL, behind the ingress
    assert not k8s.host_allowed(f"{EVIL}:{port}")
