"""The whole app in the test's event loop (tests/conftest.py `gateway_client`): health, build info and refusals
through the real chain, with the audit record each refusal leaves. No upstream is ever reached here."""

from __future__ import annotations

import asyncio
import platform
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.testing import policy_documents, rpc, tool_call
from gateway.version import VERSION
from tests.conftest import GatewayClientFactory

pytestmark = pytest.mark.inprocess

MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
INIT = rpc(
    "initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
)


async def test_healthz_names_the_version(gateway_client: GatewayClientFactory) -> None:
    client, _ = await gateway_client()
    resp = await client.get("/healthz")
    assert resp.status == 200 and resp.content_type == "application/json"
    assert orjson.loads(await resp.read()) == {"status": "ok", "version": VERSION}


async def test_metrics_carry_build_info(gateway_client: GatewayClientFactory) -> None:
    client, _ = await gateway_client()
    text = await (await client.get("/metrics")).text()
    line = f'mcp_gateway_build_info{{python="{platform.python_version()}",version="{VERSION}"}} 1.0'
    assert line in text.splitlines()


async def test_unknown_server_is_a_well_formed_404_after_authentication(gateway_client: GatewayClientFactory) -> None:
    client, keys = await gateway_client(keys={"k1": {"tenant": "acme"}})
    anonymous = await client.post("/mcp/nope", data=orjson.dumps(INIT), headers=MCP_HEADERS)
    assert anonymous.status == 401  # which servers exist is not told to a caller without credentials
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {keys['k1']}"}
    resp = await client.post("/mcp/nope", data=orjson.dumps(INIT), headers=headers)
    assert resp.status == 404 and resp.content_type == "application/json"
    body = orjson.loads(await resp.read())
    assert body["jsonrpc"] == "2.0" and body["id"] == 1 and body["error"]["code"] < 0
    assert resp.headers["X-Request-ID"]


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


async def _audit_records(path: Path, want: int) -> list[dict[str, Any]]:
    for _ in range(200):  # the sink flushes every audit.flush_interval; bounded wait, no timing asserted
        lines = _read_records(path)
        if len(lines) >= want:
            return lines
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {want} audit records in {path}")


async def test_missing_credentials_get_401_and_an_audit_record(
    gateway_client: GatewayClientFactory, tmp_path: Path
) -> None:
    client, _ = await gateway_client()
    resp = await client.post("/mcp/example", data=orjson.dumps(INIT), headers=MCP_HEADERS)
    assert resp.status == 401
    body = orjson.loads(await resp.read())
    assert body["error"]["data"]["reason"] == "missing_credentials" and resp.headers["Cache-Control"] == "no-store"
    (record,) = await _audit_records(tmp_path / "gateway-1" / "audit.jsonl", 1)
    assert record["request_id"] == resp.headers["X-Request-ID"] and record["http_status"] == 401


async def test_a_denied_tool_is_refused_by_authz_with_the_callers_key(gateway_client: GatewayClientFactory) -> None:
    docs = policy_documents(tenants={"acme": {"tools": {"deny": ["rm_*"]}}})
    client, keys = await gateway_client(docs, keys={"k1": {"tenant": "acme", "scopes": ["read", "write"]}})
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {keys['k1']}", "MCP-Protocol-Version": "2025-06-18"}
    resp = await client.post("/mcp/example", data=orjson.dumps(tool_call("rm_all")), headers=headers)
    # `compat_status_200: auto`: an authenticated caller's refused call is a 200 with the refusal in the body
    assert resp.status == 200
    body = orjson.loads(await resp.read())
    assert body["id"] == 1 and body["error"]["data"]["reason"] == "tool_denied"
