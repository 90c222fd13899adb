"""`mcp-gateway explain` against a real gateway running the same policy: a refused case names the stage and
reason the gateway itself answers with, an allowed case says "allowed" and the SDK call goes through, shadow rules
show as shadow-refused, and a candidate policy directory is judged without touching the live one."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

from tests.harness import PYTHON, ROOT, Gateway, default_policies, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def policies(upstream_url: str) -> dict[str, Any]:
    # explain names the refusal's own status (the one audited); the wire's 200 of `compat_status_200: auto` is
    # the renderer's business, so the comparison runs with the statuses sent as they are
    pol = default_policies(upstream_url, compat_status_200=False)
    pol["tenants.yaml"] = {"tenants": {"acme": {"servers": ["example"], "tools": {"deny": ["secret_admin_tool"]}}}}
    # a rule being tried out: would hide `echo`, not enforced yet
    pol["access.yaml"] = {
        "rules": [{"tenant": "acme", "server": "example", "tools": {"deny": ["echo"], "mode": "shadow"}}]
    }
    return pol


async def explain(gw: Gateway, *args: str) -> tuple[int, dict[str, Any], str]:
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "gateway",
        "explain",
        "--config",
        str(gw.config_path),
        "--server",
        "example",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    text = out.decode()
    data: dict[str, Any] = orjson.loads(text) if "--json" in args else {}
    return proc.returncode, data, text + err.decode()


async def gateway_refusal(gw: Gateway, key_id: str, tool: str) -> tuple[int, dict[str, Any]]:
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": {}}}
    async with httpx.AsyncClient() as c:
        r = await c.post(
            gw.url(), headers={**HEADERS, **gw.auth(key_id), "MCP-Protocol-Version": "2025-06-18"}, json=body
        )
    return r.status_code, r.json()["error"]


async def test_explain_matches_the_gateway(tmp_path: Path) -> None:
    up = start_upstream(tmp_path)
    gw = start_gateway(
        tmp_path / "gw",
        policies(up.url),
        keys={
            "reader": {"tenant": "acme", "scopes": ["read"]},
            "writer": {"tenant": "acme", "scopes": ["read", "write"]},
        },
    )
    candidate = tmp_path / "candidate"
    shutil.copytree(gw.policies_dir, candidate)
    tenants = yaml.safe_load((candidate / "tenants.yaml").read_text())
    tenants["tenants"]["acme"]["tools"]["deny"].append("add")
    (candidate / "tenants.yaml").write_text(yaml.safe_dump(tenants))

    with running(gw, up):
        writer, reader = gw.keys["writer"], gw.keys["reader"]
        (
            (ok_rc, _, ok_text),
            (scope_rc, scope, _),
            (tool_rc, tool, _),
            (shadow_rc, _, shadow_text),
            (unknown_rc, unknown, _),
            (cand_rc, _, cand_text),
            (bad_rc, bad, _),
        ) = await asyncio.gather(
            explain(gw, "--key", writer, "--tool", "add"),
            explain(gw, "--key", reader, "--tool", "add", "--json"),
            explain(gw, "--key-id", "writer", "--tool", "secret_admin_tool", "--json"),
            explain(gw, "--key", writer, "--tool", "echo"),
            explain(gw, "--key-id", "nobody", "--tool", "add", "--json"),
            explain(gw, "--key-id", "writer", "--tool", "add", "--policies", str(candidate)),
            # authn logs its refusal: stdout must still be nothing but the JSON
            explain(
                gw, "--key", writer[:-3] + ("xyz" if not writer.endswith("xyz") else "abc"), "--tool", "add", "--json"
            ),
        )

        # allowed: says so, and the real gateway agrees (an SDK call goes through)
        assert ok_rc == 0, ok_text
        assert "result   allowed" in ok_text
        for stage in ("client_guard", "authn", "authz", "ratelimit", "breaker"):
            assert f"{stage:<13} allowed" in ok_text
        async with streamablehttp_client(gw.url(), headers=gw.auth("writer")) as (r, w, _), ClientSession(r, w) as s:
            await s.initialize()
            res = await s.call_tool("add", {"a": 1, "b": 2})
            assert res.content[0].text == "3"  # type: ignore[union-attr]

        # refused by scope and by tool rules: the stage and reason are the ones the gateway answers with
        for rc, data, key_id, tool_name in (
            (scope_rc, scope, "reader", "add"),
            (tool_rc, tool, "writer", "secret_admin_tool"),
        ):
            assert rc == 1
            assert data["result"] == "refused"
            assert data["refused_by"]["stage"] == "authz"
            refused = data["stages"][-1]
            status, error = await gateway_refusal(gw, key_id, tool_name)
            assert (refused["status"], refused["code"], refused["reason"]) == (
                status,
                error["code"],
                error["data"]["reason"],
            )
        assert scope["refused_by"]["reason"] != tool["refused_by"]["reason"]
        # the gateway counted both refusals at authz, and the stages after it never saw those two requests
        async with httpx.AsyncClient() as c:
            metrics = (await c.get(f"{gw.base}/metrics")).text
        counts: dict[tuple[str, str], float] = {}
        for labels, value in re.findall(r"^mcp_gateway_decisions_total\{([^}]*)\} (\S+)$", metrics, re.M):
            got = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            key = (got["decision"], got["stage"])
            counts[key] = counts.get(key, 0.0) + float(value)
        assert counts[("refused", "authz")] == 2
        assert counts[("allowed", "authn")] - counts[("allowed", "authz")] == 2
        assert counts[("allowed", "authz")] == counts[("allowed", "ratelimit")] == counts[("allowed", "breaker")]

        # a shadow rule would refuse but does not: exit 0, and the stage shows what it would have done
        assert shadow_rc == 0, shadow_text
        assert "authz         shadow-refused" in shadow_text
        assert "result   allowed (would be refused by shadow rules:" in shadow_text

        assert unknown_rc == 1
        assert bad_rc == 1 and bad["refused_by"] == {"stage": "authn", "reason": "unknown_key"}
        assert unknown["refused_by"] == {"stage": "authn", "reason": "unknown_key"}

        # the candidate denies `add`; the live policy (and the running gateway) still allow it
        assert cand_rc == 1, cand_text
        assert f"policy   {candidate.resolve()}" in cand_text
        assert "result   refused by authz:" in cand_text
        async with streamablehttp_client(gw.url(), headers=gw.auth("writer")) as (r, w, _), ClientSession(r, w) as s:
            await s.initialize()
            res = await s.call_tool("add", {"a": 2, "b": 2})
            assert res.content[0].text == "4"  # type: ignore[union-attr]
