"""stdio upstreams (docs/security.md "stdio upstreams"): only the operator's YAML names what runs.

Through a real gateway process, a client sends everything it controls with shell metacharacters and variable
names in it (headers, the `initialize` clientInfo and capabilities, a tool's arguments, a 2026-07-28 `_meta`), and
the stdio server reports its own argv, environment and working directory: they are exactly the policy's, nothing of
the client's, and none of the gateway's own secrets (its environment holds canaries) unless the policy names them.
A process flood is refused by the caps before anything is executed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.policy.stdio import BASE_ENV
from tests.harness import MCP_POST_HEADERS, PYTHON, ROOT, Gateway, running, start_gateway, stdio_policies

pytestmark = pytest.mark.e2e

ACCEPT = MCP_POST_HEADERS
HOSTILE = "$(touch {marker}) `touch {marker}` ; touch {marker} && PATH=/evil LD_PRELOAD=/evil.so"
ARGS = ["-m", "tests.upstreams.stdio_server", "--name", "sec"]
# the gateway's own environment: never a child's unless the policy names it
CANARIES = {
    "AWS_SECRET_ACCESS_KEY": "canary-aws-secret",
    "MGW_TEST_CANARY": "canary-mgw",
    "DATABASE_URL": "postgresql://canary@db/x",
    "SHARED_SETTING": "passed-on-purpose",
    "UPSTREAM_TOKEN": "canary-by-reference",
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("stdio-sec")
    stdio = {
        "command": PYTHON,
        "args": ARGS,
        "cwd": str(ROOT),
        "env": {"MODE": "test", "API_TOKEN": {"env": "UPSTREAM_TOKEN"}},
        "inherit_env": ["SHARED_SETTING"],
        "max_processes": 4,
        "max_processes_per_tenant": 4,
        "max_processes_per_key": 4,
    }
    gw = start_gateway(
        tmp / "gw",
        stdio_policies("sec", stdio),
        keys={"k": {"tenant": "acme", "scopes": ["read", "write"]}},
        env=CANARIES,
    )
    with running(gw):
        yield gw, tmp


def _environ(answer: dict[str, Any]) -> dict[str, Any]:
    return json.loads(answer["result"]["content"][0]["text"])  # type: ignore[no-any-return]


def _check(seen: dict[str, Any], gw: Gateway, marker: Path) -> None:
    assert seen["argv"][1:] == ARGS[2:]  # `python -m module` puts the module's path first, then the policy's args
    assert seen["cwd"] == str(ROOT)
    names = set(seen["env"])
    assert names <= {*BASE_ENV, "SHARED_SETTING", "MODE", "API_TOKEN"}, names - {*BASE_ENV}
    assert seen["env"]["API_TOKEN"] == "canary-by-reference"  # by reference, as the policy says
    assert seen["env"]["SHARED_SETTING"] == "passed-on-purpose"
    text = json.dumps(seen)
    for value in ("canary-aws-secret", "canary-mgw", "postgresql://canary", gw.keys["k"], "evil", str(marker)):
        assert value not in text
    assert not marker.exists()


async def test_nothing_a_client_sends_reaches_the_command_or_environment(env: Any) -> None:
    gw, tmp = env
    marker = tmp / "pwned"
    hostile = HOSTILE.format(marker=marker)
    headers = {
        **gw.auth("k"),
        **ACCEPT,
        "X-Command": hostile,
        "X-Env": "PATH=/evil",
        "User-Agent": hostile,
        "X-Forwarded-For": "127.0.0.1",
    }
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {"experimental": {"env": {"PATH": "/evil"}, "command": {"run": hostile}}},
            "clientInfo": {"name": hostile, "version": hostile},
        },
    }
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "environ", "arguments": {}}}
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        r = await http.post(gw.url("sec") + "?command=" + hostile, json=init)
        assert r.status_code == 200 and "result" in r.json(), r.text
        hdrs = {"Mcp-Session-Id": r.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-06-18"}
        await http.post(gw.url("sec"), json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=hdrs)
        r = await http.post(gw.url("sec"), json=call, headers=hdrs)
        _check(_environ(r.json()), gw, marker)
        # a tool's arguments are the server's business: they reach its stdin as JSON, never a command line
        echo = {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": hostile}},
        }
        r = await http.post(gw.url("sec"), json=echo, headers=hdrs)
        assert r.json()["result"]["content"][0]["text"] == hostile
        assert not marker.exists()
        await http.delete(gw.url("sec"), headers=hdrs)
        # 2026-07-28: a process of its own, initialized by the gateway; the request's _meta changes nothing either
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"experimental": {"command": {"run": hostile}}},
            "io.modelcontextprotocol/clientInfo": {"name": hostile, "version": "1"},
        }
        modern = {**call, "params": {**call["params"], "_meta": meta}}
        mh = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "environ"}
        r = await http.post(gw.url("sec"), json=modern, headers=mh)
        assert r.status_code == 200, r.text
        _check(_environ(r.json()), gw, marker)


async def test_process_flood_is_refused_before_anything_runs(env: Any) -> None:
    gw, _ = env
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "f", "version": "0"}},
    }
    async with httpx.AsyncClient(headers={**gw.auth("k"), **ACCEPT}, timeout=60) as http:
        answers = [await http.post(gw.url("sec"), json=init) for _ in range(6)]
        statuses = [a.status_code for a in answers]
        assert statuses.count(200) == 4 and statuses.count(429) == 2, statuses
        for a in answers:
            if a.status_code == 429:
                assert a.json()["error"]["data"]["reason"] == "process_limit"
        for a in answers:
            if a.status_code == 200:
                await http.delete(gw.url("sec"), headers={"Mcp-Session-Id": a.headers["Mcp-Session-Id"]})
