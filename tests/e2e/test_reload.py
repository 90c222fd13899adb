"""Policy reload without restart: file change, SIGHUP, and a broken edit that keeps the last good snapshot."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import HMAC_SECRET, Gateway, Upstream, default_policies, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e

DEADLINE = 20.0
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
KEYS = {"alice": {"tenant": "acme", "scopes": ["read", "write"]}, "bob": {"tenant": "acme", "scopes": ["read"]}}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    up = start_upstream(tmp_path_factory.mktemp("reload-upstream"))
    with running(up):
        yield up


def keys_yaml(gw: Gateway, revoked: frozenset[str] = frozenset()) -> dict[str, Any]:
    """keys.yaml for the gateway's keys, hashed like the harness does, with some of them revoked."""
    entries = []
    for kid, fields in KEYS.items():
        digest = hmac.new(HMAC_SECRET.encode(), gw.keys[kid].encode(), hashlib.sha256).hexdigest()
        entries.append({"id": kid, "hash": digest, **fields, "revoked": kid in revoked})
    return {"keys": entries}


async def status_for(gw: Gateway, key_id: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(gw.url(), headers={**ACCEPT, **gw.auth(key_id)}, json=INIT)
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    return r.status_code, body


async def eventually(cond: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {DEADLINE}s: {what}")


async def metrics(gw: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(timeout=10) as c:
        text = (await c.get(f"{gw.base}/metrics")).text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def reloads(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], result: str) -> float:
    return m.get(("mcp_gateway_policy_reloads_total", (("result", result),)), 0.0)


def failed_flag(m: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return m[("mcp_gateway_policy_last_reload_failed", ())]


async def policy_version(gw: Gateway) -> str:
    async with httpx.AsyncClient(timeout=10) as c:
        version: str = (await c.get(f"{gw.base}/readyz")).json()["policy_version"]
    return version


def log_events(gw: Gateway) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in gw.logs().splitlines() if line.startswith("{")]


async def test_editing_keys_revokes_without_restart(tmp_path: Path, upstream: Upstream) -> None:
    gw = start_gateway(tmp_path, default_policies(upstream.url), keys=KEYS)
    with running(gw):
        pid = gw.proc.pid
        assert (await status_for(gw, "alice"))[0] == 200
        gw.write_policies({"keys.yaml": keys_yaml(gw, revoked=frozenset({"alice"}))})

        async def alice_refused() -> bool:
            status, body = await status_for(gw, "alice")
            return status == 401 and body["error"]["data"]["reason"] == "key_revoked"

        await eventually(alice_refused, "alice's key revoked by the file change")
        assert (await status_for(gw, "bob"))[0] == 200  # the other key is untouched
        assert gw.proc.pid == pid and gw.proc.popen is not None and gw.proc.popen.poll() is None
        assert any(e["event"] == "policy reloaded" and e.get("trigger") == "file_change" for e in log_events(gw))


async def test_sighup_reloads(tmp_path: Path, upstream: Upstream) -> None:
    # no file watching: only the signal can bring the edit in
    gw = start_gateway(tmp_path, default_policies(upstream.url), keys=KEYS, config={"policy_poll_seconds": 0})
    with running(gw):
        before = await policy_version(gw)
        gw.write_policies({"keys.yaml": keys_yaml(gw, revoked=frozenset({"bob"}))})
        await asyncio.sleep(0.5)  # were anything watching the files, it would have reloaded by now
        assert await policy_version(gw) == before
        assert (await status_for(gw, "bob"))[0] == 200
        gw.proc.signal(signal.SIGHUP)

        async def reloaded() -> bool:
            return await policy_version(gw) != before

        await eventually(reloaded, "SIGHUP reload")
        status, body = await status_for(gw, "bob")
        assert status == 401 and body["error"]["data"]["reason"] == "key_revoked"
        assert any(e["event"] == "policy reloaded" and e.get("trigger") == "sighup" for e in log_events(gw))


async def test_broken_edit_keeps_the_last_good_snapshot(tmp_path: Path, upstream: Upstream) -> None:
    policies = default_policies(upstream.url)
    gw = start_gateway(tmp_path, policies, keys=KEYS)
    with running(gw):
        good_version = await policy_version(gw)
        m0 = await metrics(gw)
        assert failed_flag(m0) == 0
        # a typo in servers.yaml and a key revoked in the same edit: nothing of it may apply
        broken = {"servers": {"example": {**policies["servers.yaml"]["servers"]["example"], "upstream": "typo"}}}
        gw.write_policies({"servers.yaml": broken, "keys.yaml": keys_yaml(gw, revoked=frozenset({"alice"}))})

        async def failed() -> bool:
            return failed_flag(await metrics(gw)) == 1

        await eventually(failed, "mcp_gateway_policy_last_reload_failed 1")
        m1 = await metrics(gw)
        assert reloads(m1, "failed") >= reloads(m0, "failed") + 1
        assert reloads(m1, "ok") == reloads(m0, "ok")
        assert await policy_version(gw) == good_version
        assert (await status_for(gw, "alice"))[0] == 200  # the revocation did not apply either
        failures = [e for e in log_events(gw) if e["event"] == "policy reload failed; keeping last good snapshot"]
        assert failures and failures[-1]["level"] == "error"
        assert "servers.yaml: servers.example.upstream: Extra inputs are not permitted" in failures[-1]["errors"]

        # fixing the file brings the edit in and clears the flag
        gw.write_policies({"servers.yaml": policies["servers.yaml"]})

        async def recovered() -> bool:
            return failed_flag(await metrics(gw)) == 0

        await eventually(recovered, "flag cleared by a good reload")
        assert await policy_version(gw) != good_version
        assert (await status_for(gw, "alice"))[0] == 401
        assert reloads(await metrics(gw), "ok") >= reloads(m1, "ok") + 1


async def test_a_session_survives_a_reload(tmp_path: Path, upstream: Upstream) -> None:
    policies = default_policies(upstream.url)
    gw = start_gateway(tmp_path, policies, keys=KEYS)
    with running(gw):
        async with (
            httpx.AsyncClient(headers=gw.auth("alice"), timeout=30) as http,
            streamable_http_client(gw.url(), http_client=http) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            async with asyncio.timeout(DEADLINE):
                await session.initialize()
            before = await policy_version(gw)
            tenants = policies["tenants.yaml"]
            gw.write_policies({"tenants.yaml": {"tenants": {**tenants["tenants"], "other": {}}}})

            async def reloaded() -> bool:
                return await policy_version(gw) != before

            await eventually(reloaded, "reload after adding a tenant")
            async with asyncio.timeout(DEADLINE):
                result = await session.call_tool("add", {"a": 20, "b": 22})
            block = result.content[0]
            assert isinstance(block, types.TextContent) and block.text == "42"


async def test_an_edit_that_empties_servers_yaml_is_refused_unless_allowed(tmp_path: Path, upstream: Upstream) -> None:
    """A truncated or emptied servers.yaml would take every route down: the reload is refused and the last good
    snapshot keeps serving, until the operator says `allow_empty: true`."""
    policies = default_policies(upstream.url)
    # the owner reaches its server without a tenants.yaml list, so emptying servers.yaml leaves nothing else broken
    policies["tenants.yaml"] = {"tenants": {"acme": {}}}
    gw = start_gateway(tmp_path, policies, keys=KEYS)
    with running(gw):
        assert (await status_for(gw, "alice"))[0] == 200
        good = await policy_version(gw)
        before = reloads(await metrics(gw), "failed")
        gw.write_policies({"servers.yaml": "servers: {}\n"})

        async def refused() -> bool:
            return reloads(await metrics(gw), "failed") > before

        await eventually(refused, "the emptying reload counted as a failure")
        assert await policy_version(gw) == good
        assert (await status_for(gw, "alice"))[0] == 200  # the route still serves
        failures = [e for e in log_events(gw) if e["event"] == "policy reload failed; keeping last good snapshot"]
        assert any("allow_empty" in " ".join(e.get("errors", [])) for e in failures)

        gw.write_policies({"servers.yaml": "servers: {}\nallow_empty: true\n"})

        async def emptied() -> bool:
            return await policy_version(gw) != good

        await eventually(emptied, "the deliberate emptying applied")
        assert (await status_for(gw, "alice"))[0] == 404
