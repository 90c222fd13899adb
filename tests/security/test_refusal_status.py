"""The default refusal status (`compat_status_200: auto`, docs/transports.md "Refusal status") hides nothing an HTTP
client or tool must see: authentication failures stay 401 (a real route and a made-up one alike, so the 200 of a
policy refusal, given only after authentication, tells an anonymous caller nothing), an unknown session stays 404,
and a 2026-07-28 request keeps its 403. Only an authenticated caller's refused legacy-era call is a 200, with the
refusal in the body, and it is audited as refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import Gateway, default_policies, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 1, "b": 2}}}
MODERN = "2026-07-28"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("refusal-status")
    up = start_upstream(work, json_response=True)
    keys = {"reader": {"tenant": "acme", "scopes": ["read"]}}
    gateway = start_gateway(work / "gw", default_policies(up.url), keys=keys)
    with running(gateway, up):
        yield gateway


@pytest.fixture(scope="module")
def compat_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("refusal-status-compat")
    up = start_upstream(work, json_response=True)
    keys = {"reader": {"tenant": "acme", "scopes": ["read"]}}
    gateway = start_gateway(work / "gw", default_policies(up.url, compat_status_200=True), keys=keys)
    with running(gateway, up):
        yield gateway


def _audited(gw: Gateway, rid: str) -> dict[str, object]:
    audit = Path(gw.workdir) / "audit.jsonl"
    for _ in range(200):  # the audit writer flushes asynchronously: a bounded poll
        lines = audit.read_text().splitlines() if audit.exists() else []
        found = next((json.loads(x) for x in lines if rid in x), None)
        if found is not None:
            return found  # type: ignore[no-any-return]
        httpx.get(f"{gw.base}/healthz", timeout=5)
    raise AssertionError(f"request {rid} was not audited")


def _post(gw: Gateway, path: str, headers: dict[str, str], body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{gw.base}{path}", headers={**ACCEPT, **headers}, json=body, timeout=15)


def test_authentication_failures_keep_401_on_real_and_unknown_routes(gw: Gateway) -> None:
    bad = {"Authorization": "Bearer mgw_nobody_0123456789abcdefghijklmnop"}
    for path in ("/mcp/example", "/mcp/no-such-route"):
        for headers in ({}, bad):
            r = _post(gw, path, headers, CALL)
            assert r.status_code == 401, (path, headers, r.status_code, r.text)
            assert r.json()["error"]["code"] == -31001


def test_policy_refusal_is_200_with_the_refusal_in_the_body_and_audited(gw: Gateway) -> None:
    r = _post(gw, "/mcp/example", gw.auth("reader"), CALL)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == 7 and body["error"]["code"] == -31403
    assert body["error"]["data"]["reason"] == "scope_denied" and "result" not in body
    rid = r.headers["X-Request-ID"]
    audit = Path(gw.workdir) / "audit.jsonl"
    found = None
    for _ in range(200):  # the audit writer flushes asynchronously: a bounded poll
        lines = audit.read_text().splitlines() if audit.exists() else []
        found = next((json.loads(x) for x in lines if rid in x), None)
        if found is not None:
            break
        httpx.get(f"{gw.base}/healthz", timeout=5)
    assert found is not None, "the refusal was not audited"
    assert found["decision"] == "refused" and found["stage"] == "authz" and found["reason"] == "scope_denied"
    assert found["http_status"] == 403  # the audit keeps the refusal's own status
    assert found["notes"]["sent_status"] == 200, found  # and notes what went on the wire


def test_unknown_session_and_modern_refusals_keep_their_status(gw: Gateway) -> None:
    listing = {"jsonrpc": "2.0", "id": 8, "method": "tools/list", "params": {}}  # allowed: reaches the session lookup
    r = _post(gw, "/mcp/example", {**gw.auth("reader"), "Mcp-Session-Id": "no-such-session"}, listing)
    assert r.status_code == 404 and r.json()["error"]["data"]["reason"] == "session_not_found"
    modern = {
        **CALL,
        "params": {**CALL["params"], "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}},  # type: ignore[dict-item]
    }
    headers = {**gw.auth("reader"), "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "add"}
    r = _post(gw, "/mcp/example", headers, modern)
    assert r.status_code == 403 and r.json()["error"]["data"]["reason"] == "scope_denied", r.text


def test_an_early_refusal_sent_as_200_is_audited_with_its_own_status(compat_gw: Gateway) -> None:
    """With `compat_status_200: true` an Origin refusal (made before the chain runs) goes out as 200; its audit
    record must still say 403, as every refusal made inside the chain does (red team: it recorded 200)."""
    headers = {**compat_gw.auth("reader"), "Origin": "http://evil.example", "X-Request-ID": "early-origin-1"}
    r = _post(compat_gw, "/mcp/example", headers, CALL)
    assert r.status_code == 200 and r.json()["error"]["data"]["reason"] == "bad_origin", r.text
    found = _audited(compat_gw, "early-origin-1")
    assert found["decision"] == "refused" and found["reason"] == "bad_origin"
    assert found["http_status"] == 403 and found["notes"]["sent_status"] == 200, found
