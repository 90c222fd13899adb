"""Secrets in labels, logs and answers: upstream userinfo and query secrets, and clients' credentials.

Finding 5 of issue 14 (first half): `/metrics`, which needs no credential, showed `upstream="http://u:pw@..."`
labels. Finding 8: API keys were written in clear to the error log when aiohttp logged a malformed request (a
bare-LF head, `\\x01` in a header), with the head in its exception text. Through a real gateway process: an
upstream URL's userinfo and query never appear in a metric, a log line, an admin answer or an audit record, and
no credential a client sends appears in any log line, whichever component wrote it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway.redact import REDACTED, display_url, redact_credentials
from tests.harness import default_policies, free_port, running, start_gateway, start_upstream
from tests.security.support import logged

MARK = "S3cret"  # every secret of these tests contains it: it must appear nowhere the gateway writes or answers
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
FAST_HEALTH = {"interval": 0.2, "timeout": 1.0, "unhealthy_threshold": 1, "healthy_threshold": 1}


def _secret_url(port: int, n: int) -> str:
    return f"http://alice{n}-{MARK}:pw{n}-{MARK}@127.0.0.1:{port}/mcp?token=tok{n}-{MARK}&region=eu"


def _shown(port: int) -> str:
    return f"http://{REDACTED}@127.0.0.1:{port}/mcp?{REDACTED}"


async def _until(cond: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.1)


@pytest.mark.e2e
async def test_upstream_userinfo_and_query_never_shown(tmp_path: Path) -> None:
    up = start_upstream(tmp_path)
    dead = free_port()  # nothing listens here: health checks fail, requests fail, the breaker opens
    pol = default_policies(_secret_url(up.port, 1), health=FAST_HEALTH)
    pol["servers.yaml"]["servers"]["down"] = {
        "upstreams": [{"url": _secret_url(dead, 2)}],
        "owner": "acme",
        "health": FAST_HEALTH,
        "breaker": {"consecutive_failures": 2},
    }
    # and one nobody health-checks, so requests reach the dead instance and its failures are audited
    gone = free_port()
    pol["servers.yaml"]["servers"]["gone"] = {
        "upstreams": [{"url": _secret_url(gone, 3)}],
        "owner": "acme",
        "health": {"enabled": False},
    }
    pol["tenants.yaml"]["tenants"]["acme"]["servers"] += ["down", "gone"]
    keys = {
        "k1": {"tenant": "acme", "scopes": ["read", "write"]},
        "adm": {"tenant": "acme", "role": "operator", "scopes": ["admin"]},
    }
    gw = start_gateway(tmp_path, pol, keys=keys)
    with running(gw, up):
        # real MCP traffic through the instance whose URL carries secrets (userinfo is sent as Basic auth)
        async with (
            httpx.AsyncClient(headers=gw.auth("k1"), timeout=30) as http,
            streamable_http_client(gw.url(), http_client=http) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            result = await session.call_tool("add", {"a": 2, "b": 40})
            assert not result.isError
        async with httpx.AsyncClient(timeout=30) as http:
            for server in ("down", "gone"):
                for _ in range(3):
                    r = await http.post(gw.url(server), json=INIT, headers={**HEADERS, **gw.auth("k1")})
                    assert r.status_code in (502, 503, 504)
                    assert MARK not in r.text

            async def admin_sees_down() -> str | None:
                r = await http.get(f"{gw.base}/admin/servers", headers=gw.auth("adm"))
                assert r.status_code == 200, r.text
                inst = r.json()["servers"]["down"]["instances"][0]
                return r.text if inst["health"]["status"] == "unhealthy" else None

            admin = await _until(admin_sees_down)
            metrics = (await http.get(f"{gw.base}/metrics")).text

        async def audited() -> list[dict[str, Any]] | None:
            path = gw.workdir / "audit.jsonl"
            recs = [json.loads(x) for x in path.read_bytes().splitlines() if x.strip()] if path.exists() else []
            seen = {r.get("upstream") for r in recs}
            return recs if {_shown(up.port), _shown(gone)} <= seen else None

        records = await _until(audited)
        audit_text = (gw.workdir / "audit.jsonl").read_text()
        logs = gw.logs()

    # shown, but only as scheme://host:port/path with the marker (the assertions below could not pass vacuously)
    assert f'upstream="{_shown(up.port)}"' in metrics and f'upstream="{_shown(dead)}"' in metrics
    assert _shown(up.port) in admin and _shown(dead) in admin
    assert any(r["upstream"] == _shown(up.port) and r["rpc_method"] == "tools/call" for r in records)
    assert any(r["upstream"] == _shown(gone) and r["reason"] == "upstream_unreachable" for r in records)
    health_lines = [json.loads(x) for x in logs.splitlines() if '"upstream health changed"' in x]
    assert any(line["upstream"] == _shown(dead) and line["new"] == "unhealthy" for line in health_lines), logs[-3000:]
    assert any('"breaker transition"' in x and _shown(dead) in x for x in logs.splitlines()), logs[-3000:]
    for name, text in (("metrics", metrics), ("admin", admin), ("audit", audit_text), ("logs", logs)):
        assert MARK not in text, f"a secret of an upstream URL appears in the {name}"


def _send_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.e2e
def test_credentials_in_malformed_requests_are_neverlogged(tmp_path: Path) -> None:
    up = start_upstream(tmp_path)
    gw = start_gateway(tmp_path, default_policies(up.url), keys={"k1": {"tenant": "acme", "scopes": ["read"]}})
    key = gw.keys["k1"]
    jwt = f"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ{MARK}In0.c2lnbmF0dXJl{MARK}"
    host = f"127.0.0.1:{gw.port}"
    heads = [
        # bare LF line ends (aiohttp: "Bad status line ... Expected CRLF", with the head quoted)
        f"POST /mcp/example HTTP/1.1\nHost: {host}\nAuthorization: Bearer {key}\nContent-Length: 2\n\n{{}}",
        f"GET /mcp/example HTTP/1.1\nHost: {host}\nX-API-Key: {key}\n\n",
        # a control character in a header value (aiohttp: "Invalid header value char", the line quoted)
        f"POST /mcp/example HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nX-Bad: a\x01b\r\n"
        "Content-Length: 2\r\n\r\n{}",
        f"GET /mcp/example HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\x01\r\n\r\n",
        f"GET /admin/servers HTTP/1.1\r\nHost: {host}\r\nCookie: session={key}\x01\r\n\r\n",
        f"POST /mcp/example HTTP/1.1\nHost: {host}\nAuthorization: Bearer {jwt}\nContent-Length: 2\n\n{{}}",
        f"POST /mcp/example HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic dXNlcjp{MARK}\x01\r\n\r\n",
    ]
    with running(gw, up):
        for head in heads:
            answer = _send_raw(gw.port, head.encode("latin-1"))
            assert answer.startswith(b"HTTP/1.")  # refused, not ignored
        # the key still works: it was refused for its framing, and nothing about it was learned from the logs
        r = httpx.post(gw.url(), json=INIT, headers={**HEADERS, "Authorization": f"Bearer {key}"}, timeout=30)
        assert r.status_code == 200
        gw.stop()
    logs = gw.logs()
    # the gateway did log these malformed requests (else this test would prove nothing): each one's audit record is
    # a log line, written without the head's bytes
    refused = [line for line in logs.splitlines() if '"reason":"malformed_request"' in line]
    assert len(refused) == len(heads), logs[-3000:]
    secret_part = key.split("_", 2)[2]
    for needle in (key, secret_part, jwt, MARK):
        assert needle not in logs, f"{needle[:12]}... appears in the gateway's log"
    for line in logs.splitlines():
        if line.startswith("{"):
            json.loads(line)  # redaction never breaks a JSON line


# ---------------------------------------------------------------------------------------------- unit level


@pytest.mark.unit
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:pw@h:1/mcp?token=s", f"http://{REDACTED}@h:1/mcp?{REDACTED}"),
        ("https://h.example/mcp", "https://h.example/mcp"),  # nothing secret: unchanged, labels stay as they were
        ("http://token@[::1]:9/sse#frag", f"http://{REDACTED}@[::1]:9/sse#{REDACTED}"),
        ("ws://h:8/ws?k=v", f"ws://h:8/ws?{REDACTED}"),
        ("http://h?k=v", f"http://h?{REDACTED}"),
        ("http://u:p@h", f"http://{REDACTED}@h"),
    ],
)
def test_display_url_hides_userinfo_and_query(url: str, shown: str) -> None:
    assert display_url(url) == shown


@pytest.mark.unit
@pytest.mark.parametrize("fmt", ["json", "console"])
def test_every_log_path_redacts_credentials(fmt: str) -> None:
    import logging

    import structlog

    key = f"mgw_k1_{MARK}abcdefghijklmnop"
    jwt = f"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.{MARK}sig"
    head = (
        f"POST /mcp/x HTTP/1.1\nAuthorization: Bearer tok{MARK}\nX-API-Key: other{MARK}\nCookie: s={MARK}\n"
        f"Proxy-Authorization: Basic {MARK}zzzz\nX-Token: {jwt}\nX-Key: {key}\n\n"
    ).encode()

    def emit() -> None:
        try:
            raise ValueError(f"Bad status line: {head!r}")
        except ValueError:
            logging.getLogger("aiohttp.server").exception("Error handling request from %s", "127.0.0.1")
        log = structlog.get_logger("gateway.test")
        log.warning(
            "seen", header=f"Bearer {key}", url=f"http://u:{MARK}@h/p?t={MARK}", headers={"Authorization": MARK}
        )
        try:
            raise RuntimeError(f"upstream said {jwt}")
        except RuntimeError:
            log.exception("failed")

    err = logged(fmt, emit)
    assert MARK not in err and key not in err, err
    assert err.count("[REDACTED") >= 8
    if fmt == "json":
        lines = [json.loads(line) for line in err.splitlines()]
        assert [line["event"] for line in lines] == ["Error handling request from 127.0.0.1", "seen", "failed"]


@pytest.mark.unit
def test_redaction_leaves_ordinary_text_alone() -> None:
    text = '{"event":"authentication refused","reason":"malformed_authorization","url":"http://h:1/mcp"}'
    assert redact_credentials(text) == text
    assert redact_credentials("more than one Authorization header") == "more than one Authorization header"


@pytest.mark.unit
def test_the_prefilter_never_skips_a_line_a_pattern_would_change() -> None:
    """redact_credentials() returns a line holding none of its needles without running the patterns: every
    credential shape must hold one of them, in any case (a skipped line is logged as it came)."""
    samples = [
        "Authorization: x",
        "PROXY-AUTHORIZATION=x",
        "x-api-key: y",
        "API-KEY=y",
        "Cookie: a=b",
        "set-cookie: a",
        "BEARER abcdefgh",
        "Basic abcdefgh",
        "mgw_k1_abcdefgh",
        "eyJabcde.fghijkl.m",
        "HTTP://u:p@h",
    ]
    for text in samples:
        assert redact_credentials(text) != text, text
