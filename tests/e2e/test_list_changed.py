"""A policy reload that changes what an open session's caller may list sends it `notifications/tools/list_changed`
on its GET stream; a reload that changes nothing for it sends nothing (issue 16, item 4).

Official SDK clients (their notifications arrive through `message_handler`) against the SDK example upstream. The
absence of a notification is shown through the stream's order, never by waiting: a session that gets nothing from
reloads 1 and 2 and then exactly one notification from reload 3 (which does change its list) received nothing
earlier, because its stream delivers in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession, types
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from tests.harness import Gateway, default_policies, metric_sample, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e

GUARD = 30.0  # a hang guard for each wait, never a timing assertion
TOOLS_CHANGED = "notifications/tools/list_changed"


@contextlib.asynccontextmanager
async def session(gw: Gateway, key: str, seen: list[str]) -> AsyncIterator[ClientSession]:
    async def on_message(message: Any) -> None:
        if isinstance(message, types.ServerNotification):
            seen.append(message.root.method)

    async with (
        httpx.AsyncClient(headers=gw.auth(key), timeout=30) as http,
        streamable_http_client(gw.url(), http_client=http) as (read, write, _),
        ClientSession(read, write, message_handler=on_message) as s,
    ):
        await s.initialize()
        yield s


async def metric(gw: Gateway, name: str, **labels: str) -> float:
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.get(f"{gw.base}/metrics")
        return metric_sample(r.text, name, **labels)


async def until(check: Any) -> None:
    async with asyncio.timeout(GUARD):
        while not await check():
            await asyncio.sleep(0.05)


async def reload_with(gw: Gateway, policies: dict[str, Any], name: str, content: Any) -> None:
    """Write one policy file and wait until the gateway has loaded it."""
    before = await metric(gw, "mcp_gateway_policy_reloads_total", result="ok")
    policies[name] = content
    gw.write_policies({name: content})

    async def loaded() -> bool:
        return await metric(gw, "mcp_gateway_policy_reloads_total", result="ok") > before

    await until(loaded)


async def tool_names(s: ClientSession) -> set[str]:
    return {t.name for t in (await s.list_tools()).tools}


async def test_list_changed_after_a_reload_only_for_the_callers_it_changes(tmp_path: Path) -> None:
    up = start_upstream(tmp_path)
    with running(up):
        policies = default_policies(up.url)
        gw = start_gateway(
            tmp_path / "gw",
            policies,
            keys={
                "user": {"tenant": "acme", "scopes": ["read", "write"], "role": "user"},
                "ops": {"tenant": "acme", "scopes": ["read", "write"], "role": "ops"},
            },
        )
        with running(gw):
            user_seen: list[str] = []
            ops_seen: list[str] = []
            async with session(gw, "user", user_seen) as user, session(gw, "ops", ops_seen) as ops:
                assert {"add", "echo"} <= await tool_names(user)
                assert {"add", "echo"} <= await tool_names(ops)

                async def streams_open() -> bool:
                    return await metric(gw, "mcp_gateway_streams_open", kind="sse") >= 2

                await until(streams_open)  # both GET streams are open through the gateway

                # 1: a reload that changes no caller's lists (another tenant appears)
                tenants = {"tenants": {"acme": {"servers": ["example"]}, "other": {"servers": []}}}
                await reload_with(gw, policies, "tenants.yaml", tenants)
                # 2: a tool rule for role ops only
                ops_rule = {"tenant": "acme", "server": "example", "role": "ops", "tools": {"deny": ["add"]}}
                await reload_with(gw, policies, "access.yaml", {"rules": [ops_rule]})

                async def ops_told() -> bool:
                    return TOOLS_CHANGED in ops_seen

                await until(ops_told)
                assert "add" not in await tool_names(ops)
                assert "add" in await tool_names(user)
                # 3: a tool rule for role user
                user_rule = {"tenant": "acme", "server": "example", "role": "user", "tools": {"deny": ["echo"]}}
                await reload_with(gw, policies, "access.yaml", {"rules": [ops_rule, user_rule]})

                async def user_told() -> bool:
                    return TOOLS_CHANGED in user_seen

                await until(user_told)
                assert "echo" not in await tool_names(user)
                # reloads 1 and 2 sent the user nothing, reload 3 one tools notification; no resources or prompts
                # notification for either (their scopes did not change)
                assert [m for m in user_seen if m.endswith("list_changed")] == [TOOLS_CHANGED], user_seen
                assert [m for m in ops_seen if m.endswith("list_changed")] == [TOOLS_CHANGED], ops_seen


async def test_a_legacy_sse_session_is_told_too(tmp_path: Path) -> None:
    """A legacy (2024-11-05) session's stream carries every server message: a reload that changes its caller's
    tools list sends `notifications/tools/list_changed` there (the SDK's `sse_client`)."""
    up = start_upstream(tmp_path, transport="sse")
    with running(up):
        policies = default_policies(up.url)
        policies["servers.yaml"] = {
            "servers": {"example": {"upstreams": [{"url": up.url}], "owner": "acme", "transport": "sse"}}
        }
        gw = start_gateway(
            tmp_path / "gw", policies, keys={"ops": {"tenant": "acme", "scopes": ["read", "write"], "role": "ops"}}
        )
        with running(gw):
            seen: list[str] = []

            async def on_message(message: Any) -> None:
                if isinstance(message, types.ServerNotification):
                    seen.append(message.root.method)

            async with (
                sse_client(gw.url(), headers=gw.auth("ops")) as (read, write),
                ClientSession(read, write, message_handler=on_message) as s,
            ):
                await s.initialize()
                assert "add" in await tool_names(s)
                ops_rule = {"tenant": "acme", "server": "example", "role": "ops", "tools": {"deny": ["add"]}}
                await reload_with(gw, policies, "access.yaml", {"rules": [ops_rule]})

                async def told() -> bool:
                    return TOOLS_CHANGED in seen

                await until(told)
                assert "add" not in await tool_names(s)
                assert [m for m in seen if m.endswith("list_changed")] == [TOOLS_CHANGED], seen
