"""POST /admin/reload: operators only; a good edit is applied, a broken one is refused with its problems."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import problem_reason
from tests.harness import default_policies, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e


async def test_admin_reload(tmp_path: Path) -> None:
    up = start_upstream(tmp_path)
    pol = default_policies(up.url, health={"enabled": False})
    gw = start_gateway(
        tmp_path / "gw",
        pol,
        keys={
            "adm": {"tenant": "acme", "scopes": ["read", "write", "admin"], "role": "operator"},
            "tadm": {"tenant": "acme", "scopes": ["read", "write", "admin"]},
            "usr": {"tenant": "acme"},
        },
        # no file polling: only the admin call may reload
        config={"policy_poll_seconds": 0},
    )
    with running(gw, up):
        async with httpx.AsyncClient(timeout=10) as c:
            denied = await c.post(f"{gw.base}/admin/reload", headers=gw.auth("usr"))
            assert denied.status_code == 403
            assert problem_reason(denied.headers["content-type"], 403, denied.json()) == "admin_scope_required"
            assert (await c.post(f"{gw.base}/admin/reload")).status_code == 401
            # a tenant admin is not an operator: reloading changes every tenant's policy
            tenant_admin = await c.post(f"{gw.base}/admin/reload", headers=gw.auth("tadm"))
            assert tenant_admin.status_code == 403
            assert problem_reason(tenant_admin.headers["content-type"], 403, tenant_admin.json()) == "operator_required"

            before = (await c.get(f"{gw.base}/readyz")).json()["policy_version"]
            gw.write_policies({"tenants.yaml": {"tenants": {"acme": {"servers": ["example"], "weight": 2}}}})
            ok = await c.post(f"{gw.base}/admin/reload", headers=gw.auth("adm"))
            assert ok.status_code == 200, ok.text
            assert ok.json()["ok"] is True and ok.json()["changed"] is True and ok.json()["version"] != before
            assert (await c.get(f"{gw.base}/readyz")).json()["policy_version"] == ok.json()["version"]

            gw.write_policies({"tenants.yaml": "tenants: {acme: {weight: -1}}\n"})
            bad = await c.post(f"{gw.base}/admin/reload", headers=gw.auth("adm"))
            assert bad.status_code == 422
            assert bad.json()["ok"] is False and bad.json()["version"] == ok.json()["version"]
            assert any("tenants.yaml: tenants.acme.weight" in e for e in bad.json()["errors"])

        # every admin call is audited, refusals included
        deadline = time.monotonic() + 10
        records: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            audit = gw.workdir / "audit.jsonl"
            lines = audit.read_text().splitlines() if audit.exists() else []
            records = [r for r in map(json.loads, lines) if r.get("rpc_method") == "admin/reload"]
            if len(records) == 5:
                break
            await asyncio.sleep(0.1)
        assert sorted(int(str(r["http_status"])) for r in records) == [200, 401, 403, 403, 422]
        assert sorted(str(r["reason"]) for r in records if r["http_status"] == 403) == [
            "admin_scope_required",
            "operator_required",
        ]
