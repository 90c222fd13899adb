"""A flood of made-up tool names must not become metric series (threat: label cardinality, docs/security.md).

`params.name` of a `tools/call` is the client's to choose. The per-tool counters label a tool by its name only when
the policy spells that name out; every other name, allowed through by a wildcard or refused, counts under `_other`.
Through a real gateway: an official-SDK client calls a named tool, a raw client sends hundreds of distinct names
(some a wildcard lets through to the upstream, some authz refuses, some 10 KB long), and `/metrics` must have the
same per-tool series after the second half of the flood as after the first, none named after a flooded name, with
every request and refusal still counted.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway.toolnames import OTHER_TOOL
from tests.harness import Gateway, default_policies, metric_sample, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e

HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "MCP-Protocol-Version": "2025-06-18",
}
HALF = 150  # flooded names per half
TOOL_SERIES = re.compile(r'^mcp_gateway_tool_(requests|refusals)_total\{[^}]*tool="([^"]*)"', re.M)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    up = start_upstream(tmp_path)
    pol = default_policies(up.url)
    # every flooded request must reach the per-tool counters: no rate limit, no IP block
    pol["limits.yaml"] = {"ddos": {"enabled": False}, "tiers": {}}
    gw = start_gateway(
        tmp_path,
        pol,
        # `add` is named by the policy; `echo*` lets any echo... name through to the upstream without naming it
        keys={"k1": {"tenant": "acme", "scopes": ["read", "write"], "tools": {"allow": ["add", "echo*"]}}},
    )
    with running(gw, up):
        yield gw


async def _initialize(http: httpx.AsyncClient, gw: Gateway) -> str:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "f", "version": "1"}},
    }
    r = await http.post(gw.url(), json=init, headers={**HEADERS, **gw.auth("k1")})
    assert r.status_code == 200, r.text
    return r.headers["Mcp-Session-Id"]


async def _flood(http: httpx.AsyncClient, gw: Gateway, session: str, start: int, names: list[str]) -> int:
    """HALF calls with fresh names; returns how many authz refused (the `x...` ones)."""
    refused = 0
    for i in range(start, start + HALF):
        token = secrets.token_hex(8)
        kind = i % 3
        name = f"echo{token}" if kind == 0 else f"x{token}" if kind == 1 else f"x{token}{'y' * 10_000}"
        names.append(token)
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": i + 1, "method": "tools/call", "params": {"name": name}}
        r = await http.post(gw.url(), json=msg, headers={**HEADERS, **gw.auth("k1"), "Mcp-Session-Id": session})
        if kind == 0:
            assert r.status_code == 200, r.text  # the upstream's answer (an unknown tool), relayed
        else:
            assert r.status_code in (200, 403), r.text  # 200 on a compat_status_200 route
            assert r.json()["error"]["data"]["reason"] == "tool_denied", r.text
            refused += 1
    return refused


def _tool_series(text: str) -> set[tuple[str, str]]:
    return {(m.group(0).split("{")[0], m.group(0).split('tool="')[1].rstrip('"')) for m in TOOL_SERIES.finditer(text)}


async def test_flooded_tool_names_share_one_label(gateway: Gateway) -> None:
    gw = gateway
    async with (
        httpx.AsyncClient(headers=gw.auth("k1"), timeout=30) as sdk_http,
        streamable_http_client(gw.url(), http_client=sdk_http) as (r, w, _),
        ClientSession(r, w) as s,
    ):
        await s.initialize()
        for i in range(3):
            res = await s.call_tool("add", {"a": i, "b": 1})
            assert res.content[0].text == str(i + 1)  # type: ignore[union-attr]

    names: list[str] = []
    async with httpx.AsyncClient(timeout=30) as http:
        session = await _initialize(http, gw)
        refused = await _flood(http, gw, session, 0, names)
        first = (await http.get(f"{gw.base}/metrics")).text
        refused += await _flood(http, gw, session, HALF, names)
        second = (await http.get(f"{gw.base}/metrics")).text

    series = _tool_series(second)
    assert series == _tool_series(first)  # the second half of the flood added no series
    assert {tool for _, tool in series} == {"add", OTHER_TOOL}
    assert not [token for token in names if token in second]
    assert metric_sample(second, "mcp_gateway_tool_requests_total", server="example", tool="add") == 3
    assert metric_sample(second, "mcp_gateway_tool_requests_total", server="example", tool=OTHER_TOOL) == 2 * HALF
    assert refused == 2 * HALF * 2 // 3
    other_refused = {"server": "example", "tool": OTHER_TOOL, "stage": "authz", "reason": "tool_denied"}
    assert metric_sample(second, "mcp_gateway_tool_refusals_total", **other_refused) == refused
    assert metric_sample(second, "mcp_gateway_tool_refusals_total", tool="add") == 0
