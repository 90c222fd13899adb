"""Helpers (no tests here) shared by the identity e2e tests: raw JSON-RPC over HTTP (for exact status and headers,
which the v1 SDK client hides or hangs on), audit record lookup, and the header-recording upstream."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict

from tests.harness import PYTHON, Proc, Upstream, free_port, wait_port

ACCEPT = "application/json, text/event-stream"
PROTOCOL = "2025-06-18"


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: Any
    request_id: str

    @property
    def error(self) -> dict[str, Any]:
        assert isinstance(self.body, dict) and "error" in self.body, self.body
        err: dict[str, Any] = self.body["error"]
        return err


def rpc(method: str, params: dict[str, Any] | None = None, rpc_id: int | str | None = 1) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    if rpc_id is not None:
        msg["id"] = rpc_id
    return msg


def initialize_msg(rpc_id: int = 1) -> dict[str, Any]:
    return rpc(
        "initialize",
        {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "identity-test", "version": "1"}},
        rpc_id,
    )


def _parse(ctype: str, text: str) -> Any:
    if ctype.startswith("text/event-stream"):
        # the last `data:` line of a message event holds the JSON-RPC answer
        datas = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
        return json.loads(datas[-1]) if datas else None
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


async def post(
    http: aiohttp.ClientSession,
    url: str,
    message: dict[str, Any],
    headers: dict[str, str] | None = None,
    session_id: str | None = None,
) -> Answer:
    rid = uuid.uuid4().hex
    h = {"Accept": ACCEPT, "Content-Type": "application/json", "MCP-Protocol-Version": PROTOCOL, "X-Request-ID": rid}
    if session_id:
        h["Mcp-Session-Id"] = session_id
    h.update(headers or {})
    async with http.post(url, data=json.dumps(message), headers=h, timeout=aiohttp.ClientTimeout(total=20)) as r:
        text = await r.text()
        return Answer(r.status, CIMultiDict(r.headers), _parse(r.headers.get("Content-Type", ""), text), rid)


async def open_session(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> str:
    ans = await post(http, url, initialize_msg(), headers)
    assert ans.status == 200, (ans.status, ans.body)
    sid = ans.headers.get("Mcp-Session-Id")
    assert sid, ans.headers
    note = await post(http, url, rpc("notifications/initialized", rpc_id=None), headers, session_id=sid)
    assert note.status == 202, note.status
    return sid


# the status of a policy refusal (authz, limits, breaker) of an authenticated caller's legacy-era tools/call POST
# under the default `compat_status_200: auto`: 200 with the error in the body (docs/transports.md "Refusal status")
POLICY_REFUSAL = 200


def assert_refused(ans: Answer, status: int, code: int, reason: str) -> None:
    assert ans.status == status, (ans.status, ans.body)
    assert ans.headers.get("Content-Type", "").startswith("application/json"), ans.headers
    err = ans.error
    assert err["code"] == code, err
    assert err["data"]["reason"] == reason, err


async def audit_record(audit_path: Path, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The audit record of one request (the file sink flushes in batches: poll, bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(lambda: audit_path.read_text() if audit_path.exists() else "")
        if text:
            for line in text.splitlines():
                if request_id in line:
                    rec: dict[str, Any] = json.loads(line)
                    if rec.get("request_id") == request_id:
                        return rec
        await asyncio.sleep(0.1)
    raise AssertionError(f"no audit record for request {request_id} in {audit_path}")


def start_recorder(workdir: Path, *, json_response: bool = False) -> tuple[Upstream, Path]:
    port = free_port()
    record = workdir / f"headers-{port}.jsonl"
    argv = [PYTHON, "-m", "tests.upstreams.header_recorder", "--port", str(port), "--record", str(record)]
    if json_response:
        argv.append("--json-response")
    log = workdir / f"recorder-{port}.log"
    proc = Proc(argv, log).start()
    wait_port(port, proc=proc.popen, log=log)
    return Upstream(proc, port, "streamable-http"), record


def recorded(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
