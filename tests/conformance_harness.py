"""The official MCP conformance suite (`@modelcontextprotocol/conformance`, server scenarios) as a library for tests
and scripts: run it against a URL, read what every scenario's checks gave, compare two runs.

The suite and the Node.js it needs are installed by `make conformance` into tests/conformance/node_modules from the
committed package-lock.json (`make test` depends on it). The suite has no option for credentials: for a route that
needs an API key, tests/conformance/auth-header.mjs is preloaded and adds the `Authorization` header to every request
the suite's process makes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness import ROOT, Gateway, start_gateway

CONF_DIR = ROOT / "tests" / "conformance"
NODE = CONF_DIR / "node_modules" / ".bin" / "node"
SUITE_JS = CONF_DIR / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
AUTH_PRELOAD = CONF_DIR / "auth-header.mjs"
AUTH_ENV = "MGW_CONFORMANCE_AUTHORIZATION"
# the suite's results directories: server-<scenario>-<ISO timestamp with dashes>
_RESULT_DIR = re.compile(r"^server-(?P<name>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")
# a scenario whose client request is never answered fails by the SDK's 60 s request timeout; a run of all
# scenarios gets room for several of those before it is called hung
RUN_TIMEOUT = 600.0


def installed() -> str | None:
    """None when the suite and its Node are installed, else what to do."""
    if NODE.exists() and SUITE_JS.exists():
        return None
    return f"the conformance suite is not installed in {CONF_DIR} (run `make conformance`)"


@dataclass(frozen=True)
class ScenarioResult:
    """One scenario's outcome: its checks as (check id, status), in a canonical order."""

    name: str
    checks: tuple[tuple[str, str], ...]
    # check id -> the suite's `details` of that check (the last one of that id); not part of the comparison
    details: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def failures(self) -> list[str]:
        return [check for check, status in self.checks if status == "FAILURE"]

    def summary(self) -> str:
        counts = Counter(status for _, status in self.checks)
        return ", ".join(f"{status} {n}" for status, n in sorted(counts.items())) or "no checks"


def _env(authorization: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(AUTH_ENV, None)
    env.pop("NODE_OPTIONS", None)
    if authorization is not None:
        env[AUTH_ENV] = authorization
    return env


async def _node(args: Sequence[str], authorization: str | None, log: Path, timeout: float) -> int:
    argv = [str(NODE)]
    if authorization is not None:
        argv += ["--import", AUTH_PRELOAD.as_uri()]
    argv += [str(SUITE_JS), *args]
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=out, stderr=asyncio.subprocess.STDOUT, env=_env(authorization), cwd=str(CONF_DIR)
        )
        try:
            return await asyncio.wait_for(proc.wait(), timeout)
        finally:
            # timed out, or the caller was cancelled: never leave the suite running
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def server_scenarios() -> list[str]:
    """Every server scenario of the installed suite (`list --server`), active and pending."""
    proc = await asyncio.create_subprocess_exec(
        str(NODE), str(SUITE_JS), "list", "--server", stdout=asyncio.subprocess.PIPE, cwd=str(CONF_DIR)
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return re.findall(r"^\s+- (\S+)", out.decode(), flags=re.MULTILINE)


def read_results(out_dir: Path) -> dict[str, ScenarioResult]:
    """The scenarios whose checks.json the suite wrote under `out_dir` (the latest run of each)."""
    found: dict[str, ScenarioResult] = {}
    for path in sorted(out_dir.iterdir()):
        m = _RESULT_DIR.match(path.name)
        checks_file = path / "checks.json"
        if m is None or not checks_file.exists():
            continue
        checks = json.loads(checks_file.read_text())
        pairs = tuple(sorted((str(c.get("id")), str(c.get("status"))) for c in checks))
        details = {str(c.get("id")): c.get("details") for c in checks}
        found[m.group("name")] = ScenarioResult(m.group("name"), pairs, details)
    return found


def _fresh_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


async def run_suite(
    url: str, out_dir: Path, *, authorization: str | None = None, timeout: float = RUN_TIMEOUT
) -> dict[str, ScenarioResult]:
    """Run every server scenario (`--suite all`) against `url`; the suite's log is `out_dir`/suite.log."""
    _fresh_dir(out_dir)
    args = ["server", "--url", url, "--suite", "all", "--output-dir", str(out_dir)]
    await _node(args, authorization, out_dir / "suite.log", timeout)
    return read_results(out_dir)


def differences(
    expected: Mapping[str, ScenarioResult], got: Mapping[str, ScenarioResult], scenarios: Iterable[str]
) -> dict[str, str]:
    """scenario -> how `got` differs from `expected` (a scenario missing from either side differs)."""
    out: dict[str, str] = {}
    for name in scenarios:
        want, have = expected.get(name), got.get(name)
        if want is None or have is None:
            out[name] = f"direct: {'ran' if want else 'missing'}, gateway: {'ran' if have else 'missing'}"
        elif want.checks != have.checks:
            lost = sorted(set(want.checks) - set(have.checks))
            extra = sorted(set(have.checks) - set(want.checks))
            out[name] = f"direct only {lost}, gateway only {extra}"
    return out


# ---------------------------------------------------------------- the gateway in front of the conformance upstream

KEY_ID = "conformance"
# route -> server name in the policies: `key` needs an API key, `anonymous` serves anyone (read and write scopes)
ROUTES = {"key": "conformance", "anonymous": "public"}
SUITE_RATE = {"rate": 6000, "per": "minute"}


def conformance_policies(upstream_url: str) -> dict[str, Any]:
    """The conformance upstream behind two routes of tenant `acme`: one for an API key, one anonymous."""
    upstream = [{"url": upstream_url}]
    return {
        "servers.yaml": {
            "servers": {
                ROUTES["key"]: {"upstreams": upstream, "owner": "acme"},
                ROUTES["anonymous"]: {
                    "upstreams": upstream,
                    "owner": "acme",
                    "auth": {"anonymous": True, "anonymous_scopes": ["read", "write"]},
                },
            }
        },
        "tenants.yaml": {"tenants": {"acme": {"servers": list(ROUTES.values())}}},
        "keys.yaml": {"keys": []},
        # a suite run opens a session per scenario, faster than the default per-caller rates allow
        "limits.yaml": {"tiers": {role: SUITE_RATE for role in ("user", "anonymous")}},
        "access.yaml": {"rules": []},
    }


def start_conformance_gateway(workdir: Path, upstream_url: str, *, redis_url: str | None = None) -> Gateway:
    """A gateway (embedded stores, or Redis under a key prefix of its own) serving the upstream on both routes."""
    # the suite never ends its sessions (its client closes without DELETE), so repeated runs hold about 32 sessions
    # per run and credential until they idle out; the default caps (256 per key) would refuse the ninth run
    config: dict[str, Any] = {"http": {"max_sessions_per_key": 100_000, "max_sessions_per_tenant": 100_000}}
    if redis_url is not None:
        config["redis"] = {"url": redis_url, "key_prefix": f"mgw-conformance-{uuid.uuid4().hex}:"}
    keys = {KEY_ID: {"tenant": "acme", "scopes": ["read", "write"]}}
    return start_gateway(workdir, conformance_policies(upstream_url), keys=keys, config=config)


def route_target(gw: Gateway, route: str) -> tuple[str, str | None]:
    """(URL, Authorization value or None) of a gateway route."""
    url = gw.url(ROUTES[route])
    return url, (f"Bearer {gw.keys[KEY_ID]}" if route == "key" else None)
