"""The official clients through the gateway: the Python SDK 1.x (.venv), 2.x (.venv-mcp2) and the TypeScript SDK
(tests/clients/ts), each over every transport it speaks, against upstreams built with the Python SDK.

Each client is a script (tests/clients/py_client.py, tests/clients/ts/client.mjs) run as a subprocess that prints
what it saw as JSON: a call, a refusal (tools/call with a read-only key) and the session after it, a progress
stream, a server-to-client request (elicitation), resumption with Last-Event-ID (Streamable HTTP) and the session's
end. `make clients` (a prerequisite of `make test`) installs the 2.x venv and the npm package; the module runs it
too, so the tests also work from a bare pytest.

The elicitation request travels on the tools/call POST's own stream (the SDK server relates it to the call), not on
the standalone GET stream, so it does not depend on the order in which the GET and the POST reach the upstream.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.harness import (
    PYTHON,
    ROOT,
    Gateway,
    Proc,
    free_port,
    metric_sample,
    running,
    start_gateway,
    start_upstream,
    wait_port,
)

pytestmark = pytest.mark.e2e

PY2 = ROOT / ".venv-mcp2" / "bin" / "python"
TS_DIR = ROOT / "tests" / "clients" / "ts"
KEYS = {"rw": {"tenant": "acme", "scopes": ["read", "write"]}, "reader": {"tenant": "acme", "scopes": ["read"]}}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/list",
    "params": {},
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def install_clients() -> None:
    """`make clients`, once at a time across xdist workers (it is a no-op when its stamps are current)."""
    lock = ROOT / ".venv" / ".clients.lock"
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        done = subprocess.run(
            ["make", "-s", "clients"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
        )
    assert done.returncode == 0, f"make clients failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@dataclass
class Env:
    gw: Gateway


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    install_clients()
    work = tmp_path_factory.mktemp("matrix")
    resumable = start_upstream(work, module="tests.upstreams.resumable_example")
    sse = start_upstream(work, transport="sse")
    ws_port = free_port()
    ws = Proc([PYTHON, "-m", "tests.upstreams.ws_server", "--port", str(ws_port)], work / "ws.log").start()
    wait_port(ws_port, proc=ws.popen, log=ws.log)
    servers: dict[str, Any] = {
        "http": {"upstreams": [{"url": resumable.url}]},
        "sse": {"upstreams": [{"url": sse.url}], "transport": "sse"},
        "websocket": {"upstreams": [{"url": f"ws://127.0.0.1:{ws_port}/ws"}], "transport": "websocket"},
        # the operator override: every refusal with its own status
        "http-truthful": {"upstreams": [{"url": resumable.url}], "compat_status_200": False},
        "sse-truthful": {"upstreams": [{"url": sse.url}], "transport": "sse", "compat_status_200": False},
    }
    for server in servers.values():
        server["owner"] = "acme"
    policies = {
        "servers.yaml": {"servers": servers},
        "tenants.yaml": {"tenants": {"acme": {"servers": list(servers)}}},
        "limits.yaml": {},
        "access.yaml": {"rules": []},
    }
    gw = start_gateway(work / "gw", policies, keys=KEYS)
    with running(gw, resumable, sse, ws):
        yield Env(gw)


def run_client(env: Env, sdk: str, transport: str, server: str) -> dict[str, Any]:
    common = [
        "--transport",
        transport,
        "--url",
        env.gw.url(server),
        "--key",
        env.gw.keys["rw"],
        "--reader-key",
        env.gw.keys["reader"],
    ]
    if transport == "streamable-http":
        common.append("--resumable")
    if sdk == "ts":
        argv = ["node", str(TS_DIR / "client.mjs"), *common]
    else:
        python = PYTHON if sdk == "py1" else str(PY2)
        argv = [python, str(ROOT / "tests" / "clients" / "py_client.py"), *common]
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False, env={**os.environ, "CI": ""}
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"{sdk} printed no result (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    assert "fatal" not in result, (result, done.stderr[-3000:])
    return result


MATRIX = [
    ("py1", "streamable-http"),
    ("py1", "sse"),
    ("py1", "websocket"),
    ("py2", "streamable-http"),
    ("py2", "sse"),
    ("ts", "streamable-http"),
    ("ts", "sse"),
]
# what each SDK raises for a JSON-RPC error answer
MCP_ERROR = {"py1": "McpError", "py2": "MCPError", "ts": "McpError"}


@pytest.mark.parametrize(("sdk", "transport"), MATRIX, ids=[f"{s}-{t}" for s, t in MATRIX])
def test_official_client_through_the_gateway(env: Env, sdk: str, transport: str) -> None:
    got = run_client(env, sdk, transport, transport if transport != "streamable-http" else "http")

    # a refusal is the tool call's error, with the gateway's code and reason, and the session goes on
    refusal = got["refusal"]
    assert "session_error" not in refusal, refusal
    assert refusal["refused"]["kind"] == MCP_ERROR[sdk], refusal
    assert refusal["refused"]["code"] == -31403 and refusal["refused"]["reason"] == "scope_denied", refusal
    assert "after" in refusal, refusal  # tools/list answered on the same session after the refusal

    assert got["call"] == "42"
    assert got["progress"] == {"events": [[1, 3], [2, 3], [3, 3]], "result": "counted to 3"}
    assert got["elicitation"] == {"asked": ["Confirm deploy?"], "result": "deploy: confirmed"}

    if transport == "streamable-http":
        resumed = got["resumption"]
        assert resumed["first"] == "counted to 3" and len(resumed["tokens"]) >= 2, resumed
        # the result came over the GET with Last-Event-ID (a GET runs no tool): the upstream session that issued the
        # stream replayed it
        assert resumed["replayed"] == "counted to 3", resumed
        if sdk != "ts":  # the TypeScript SDK reports no event ids on a resumed stream
            # the replay starts after the first event, up to the result
            assert resumed["replayed_tokens"] == resumed["tokens"][1:], resumed
        session = got["session"]
        assert session["id"] and session["deletes"] == [200], session
        # the session ended at the gateway too: its id is unknown now
        r = httpx.post(
            env.gw.url("http"),
            headers={**ACCEPT, **env.gw.auth("rw"), "Mcp-Session-Id": session["id"]},
            json=INIT,
            timeout=10,
        )
        assert r.status_code == 404 and r.json()["error"]["data"]["reason"] == "session_not_found", r.text
    elif transport == "sse":
        # the client closed its stream: the legacy session (and the gateway's stream) ended
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = httpx.get(f"{env.gw.base}/metrics", timeout=10).text
            if metric_sample(text, "mcp_gateway_legacy_sse_streams", server="sse") == 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the legacy SSE stream stayed open after the client closed")


TRUTHFUL = [
    ("py1", "streamable-http"),
    ("py1", "sse"),
    ("py2", "streamable-http"),
    ("py2", "sse"),
    ("ts", "streamable-http"),
    ("ts", "sse"),
]


@pytest.mark.parametrize(("sdk", "transport"), TRUTHFUL, ids=[f"{s}-{t}" for s, t in TRUTHFUL])
def test_refusal_with_its_own_status_per_sdk(env: Env, sdk: str, transport: str) -> None:
    """`compat_status_200: false` (every refusal with its own status, here 403): what made `auto` the default.
    The Python SDK 1.x loses its session (Streamable HTTP: the transport's HTTPStatusError ends it), and over SSE
    both Python SDKs' POST writers stop, so the next request never gets an answer; 2.x over Streamable HTTP reads
    the JSON-RPC error from the 403 body; TypeScript keeps the session, over Streamable HTTP seeing only an HTTP
    error with the body as text."""
    server = "http-truthful" if transport == "streamable-http" else "sse-truthful"
    got = run_client(env, sdk, transport, server)
    refusal = got["refusal"]
    if sdk == "py1" or (sdk == "py2" and transport == "sse"):
        broken = "session_error" in refusal or "after_error" in refusal
        assert broken, refusal
    elif sdk == "py2":
        assert refusal["refused"]["kind"] == "MCPError" and refusal["refused"]["code"] == -31403, refusal
        assert "after" in refusal, refusal
    elif transport == "sse":
        # the gateway writes the error on the session's stream before it answers the POST, and TypeScript settles
        # the call with whichever comes first
        assert refusal["refused"]["kind"] == "McpError" and refusal["refused"]["code"] == -31403, refusal
        assert "after" in refusal, refusal
    else:
        assert refusal["refused"]["kind"] == "StreamableHTTPError" and "403" in refusal["refused"]["text"], refusal
        assert '"scope_denied"' in refusal["refused"]["text"], refusal
        assert "after" in refusal, refusal
