"""Every official client and transport it speaks (the client matrix: Python SDK 1.x and 2.x, TypeScript SDK; Streamable
HTTP, legacy HTTP+SSE, WebSocket) against a `transport: stdio` route, a per-session process of the SDK's stdio server
(tests/upstreams/stdio_server.py): a call, a refusal and the session after it, progress, a server-to-client request
(elicitation), the session's end. The clients are the scripts tests/e2e/test_client_matrix.py runs; resumption is
left out (a stdio server keeps no event store)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.test_client_matrix import KEYS, MATRIX, MCP_ERROR, PY2, TS_DIR, install_clients
from tests.e2e.test_stdio import stdio_server
from tests.harness import PYTHON, ROOT, Gateway, running, start_gateway

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    install_clients()
    work = tmp_path_factory.mktemp("stdio-matrix")
    servers = {"tools": stdio_server("example")}
    policies = {
        "servers.yaml": {"servers": servers},
        "tenants.yaml": {"tenants": {"acme": {"servers": list(servers)}}},
        "limits.yaml": {},
        "access.yaml": {"rules": []},
    }
    gateway = start_gateway(work / "gw", policies, keys=KEYS)
    with running(gateway):
        yield gateway


def run_client(gw: Gateway, sdk: str, transport: str) -> dict[str, Any]:
    url = gw.url("tools") + ("/sse" if transport == "sse" else "")
    common = ["--transport", transport, "--url", url, "--key", gw.keys["rw"], "--reader-key", gw.keys["reader"]]
    if sdk == "ts":
        argv = ["node", str(TS_DIR / "client.mjs"), *common]
    else:
        argv = [PYTHON if sdk == "py1" else str(PY2), str(ROOT / "tests" / "clients" / "py_client.py"), *common]
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False, env={**os.environ, "CI": ""}
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"{sdk} printed no result (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    assert "fatal" not in result, (result, done.stderr[-3000:])
    return result


@pytest.mark.parametrize(("sdk", "transport"), MATRIX, ids=[f"{s}-{t}" for s, t in MATRIX])
def test_official_client_reaches_a_stdio_server(gw: Gateway, sdk: str, transport: str) -> None:
    got = run_client(gw, sdk, transport)
    refusal = got["refusal"]
    assert "session_error" not in refusal, refusal
    assert refusal["refused"]["kind"] == MCP_ERROR[sdk], refusal
    assert refusal["refused"]["code"] == -31403 and refusal["refused"]["reason"] == "scope_denied", refusal
    assert "after" in refusal, refusal
    assert got["call"] == "42"
    assert got["progress"] == {"events": [[1, 3], [2, 3], [3, 3]], "result": "counted to 3"}
    assert got["elicitation"] == {"asked": ["Confirm deploy?"], "result": "deploy: confirmed"}
    if transport == "streamable-http":
        session = got["session"]
        assert session["id"] and session["deletes"] == [200], session
