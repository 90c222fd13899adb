"""Shadow mode end to end: a shadow rate limit and a shadow tool rule refuse nothing, while the gateway counts
every would-refusal in `mcp_gateway_decisions_total{decision="shadow_refused"}` and audits it on the request's
record; `explain` shows the shadow tool rule as shadow-refused with exit 0."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
import orjson
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

from gateway.chain import STAGES
from tests.harness import PYTHON, ROOT, default_policies, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e

CALLS = 8


def decision_counts(metrics: str, decision: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("mcp_gateway_decisions_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if labels.get("decision") == decision:
                out[labels["stage"]] = out.get(labels["stage"], 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def shadow_counts(metrics: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for line in metrics.splitlines():
        if not line.startswith("mcp_gateway_decisions_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("decision") == "shadow_refused":
            out[(labels["stage"], labels["reason"])] = float(line.rsplit(" ", 1)[1])
    return out


async def test_shadow_limit_and_rule_refuse_nothing_but_are_counted_and_audited(tmp_path: Path) -> None:
    up = start_upstream(tmp_path)
    pol = default_policies(up.url)
    # 2 requests a minute for users, in shadow: everything past the burst would be refused
    pol["limits.yaml"] = {"tiers": {"user": {"rate": 2, "per": "minute", "burst": 2, "mode": "shadow"}}}
    pol["access.yaml"] = {"rules": [{"tenant": "acme", "tools": {"deny": ["add"], "mode": "shadow"}}]}
    gw = start_gateway(
        tmp_path / "gw", pol, keys={"k1": {"tenant": "acme", "scopes": ["read", "write"], "role": "user"}}
    )
    with running(gw, up):
        async with streamablehttp_client(gw.url(), headers=gw.auth("k1")) as (r, w, _), ClientSession(r, w) as s:
            await s.initialize()
            for i in range(CALLS):
                res = await s.call_tool("add", {"a": i, "b": 1})
                assert not res.isError
                assert res.content[0].text == str(i + 1)  # type: ignore[union-attr]

        deadline = time.monotonic() + 10
        while True:
            records = (
                [orjson.loads(line) for line in (gw.workdir / "audit.jsonl").read_bytes().splitlines() if line.strip()]
                if (gw.workdir / "audit.jsonl").exists()
                else []
            )
            calls = [r for r in records if r.get("rpc_method") == "tools/call"]
            async with httpx.AsyncClient() as c:
                counted = decision_counts((await c.get(f"{gw.base}/metrics")).text, "allowed")
            # the session's teardown (DELETE, the end of its GET stream) is counted when it ends but reaches the
            # audit file with the writer's next batch: wait until the file has caught up with what was counted
            settled = counted.get("client_guard") == len(records)
            if (len(calls) == CALLS and settled) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert len(calls) == CALLS
        assert all(r["decision"] == "allowed" and r["http_status"] in (200, 202) for r in records)

        audited: dict[tuple[str, str], int] = {}
        for rec in records:
            for entry in rec.get("shadow") or []:
                key = (entry["stage"], entry["reason"])
                audited[key] = audited.get(key, 0) + 1
        # every tool call would be refused by the shadow tool rule; the limit would refuse all but the burst
        authz = {k: v for k, v in audited.items() if k[0] == "authz"}
        assert sum(authz.values()) == CALLS
        limit = {k: v for k, v in audited.items() if k[0] == "ratelimit"}
        assert sum(limit.values()) >= CALLS - 2

        async with httpx.AsyncClient() as c:
            metrics = (await c.get(f"{gw.base}/metrics")).text
        assert shadow_counts(metrics) == {k: float(v) for k, v in audited.items()}
        # nothing was refused: every stage let every request through (its shadow refusals included)
        allowed = decision_counts(metrics, "allowed")
        assert allowed == {stage: float(len(records)) for stage in STAGES}
        assert decision_counts(metrics, "refused") == {}

        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "gateway", "explain", "--config", str(gw.config_path), "--server", "example",
            "--key-id", "k1", "--tool", "add",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
        text = out.decode()
        assert proc.returncode == 0, text + err.decode()
        assert "authz         shadow-refused" in text
        assert "result   allowed (would be refused by shadow rules:" in text
