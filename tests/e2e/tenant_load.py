"""Paced per-tenant load against a real gateway, and the gateway's own view of it (its audit file).

Each tenant is one API key with one MCP session; its driver sends `tools/call` at a set rate (open loop, paced by
accumulated credit, a bounded number in flight) and keeps every status. What the limiter decided, and when, is read
back from the gateway's audit records (`started_at` is stamped by the gateway when the request arrives), so a
stall of the test process or of the client's sockets does not move a request from one window to another.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson

from tests.harness import Gateway

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
VERSION = "2025-06-18"
INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "load", "version": "1"}},
}


async def open_session(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> dict[str, str]:
    """The headers of an initialized MCP session (initialize + notifications/initialized)."""
    async with http.post(url, json=INIT, headers={**ACCEPT, **headers}) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        sid = resp.headers["Mcp-Session-Id"]
        await resp.read()
    sess = {**headers, "Mcp-Session-Id": sid, "MCP-Protocol-Version": VERSION}
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    async with http.post(url, json=note, headers={**ACCEPT, **sess}) as resp:
        assert resp.status == 202, resp.status
    return sess


class Flag(Protocol):
    """A threading.Event or an asyncio.Event: the load only polls it."""

    def is_set(self) -> bool: ...


@dataclass
class TenantLoad:
    """One tenant's open-loop load: `rate` requests per second until `stop` is set."""

    gw: Gateway
    key_id: str
    rate: float
    statuses: list[int] = field(default_factory=list)
    max_in_flight: int = 64
    # requests a stalled test process may send at once when it wakes: few for a tenant that must stay under its
    # burst, more for one that must keep up its demand
    max_credit: float = 2.0
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    async def run(self, stop: Flag, go: Flag | None = None) -> None:
        """Open the session, send `ping`s (free: never charged, so the limiter has not seen the tenant yet) until
        `go` is set, then `tools/call`s until `stop` is: the session and the keep-alive connections are ready when
        the charged load begins."""
        loop = asyncio.get_running_loop()
        connector = aiohttp.TCPConnector(limit=self.max_in_flight)
        async with aiohttp.ClientSession(connector=connector) as http:
            sess = await open_session(http, self.gw.url(), self.gw.auth(self.key_id))
            gate = asyncio.Semaphore(self.max_in_flight)
            pending: set[asyncio.Task[None]] = set()
            credit, last = 1.0, loop.time()
            while not stop.is_set():
                now = loop.time()
                credit = min(credit + (now - last) * self.rate, self.max_credit)
                last = now
                charged = go is None or go.is_set()
                while credit >= 1.0 and not gate.locked():
                    credit -= 1.0
                    await gate.acquire()
                    task = asyncio.create_task(self._one(http, sess, gate, charged))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                await asyncio.sleep(min(0.01, 0.5 / self.rate))
            if pending:
                await asyncio.gather(*pending)

    def in_thread(self, stop: threading.Event, go: threading.Event | None = None) -> asyncio.Future[None]:
        """`run` on an event loop of its own in a thread: a tenant's pacing does not wait for the other tenants'
        callbacks (a small tenant's requests stay evenly spaced however busy the heavy ones keep their loop)."""
        return asyncio.ensure_future(asyncio.to_thread(asyncio.run, self.run(stop, go)))

    async def _one(
        self, http: aiohttp.ClientSession, sess: dict[str, str], gate: asyncio.Semaphore, charged: bool
    ) -> None:
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": "ping"}
        if charged:
            body.update(method="tools/call", params={"name": "add", "arguments": {"a": 1, "b": 2}})
        try:
            async with http.post(self.gw.url(), json=body, headers={**ACCEPT, **sess}) as resp:
                await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError):
            status = -1
        finally:
            gate.release()
        if charged:
            self.statuses.append(status)
        else:
            assert status == 200, status  # a ping is never limited


@dataclass(frozen=True)
class Decision:
    at: float  # the request's arrival at the gateway, seconds since the epoch
    allowed: bool
    reason: str | None


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def decisions(audit: Path, tenant: str) -> list[Decision]:
    """The tenant's `tools/call` decisions from the gateway's audit file, in arrival order."""
    out: list[Decision] = []
    for line in audit.read_bytes().splitlines():
        if not line.strip():
            continue
        rec: dict[str, Any] = orjson.loads(line)
        if rec.get("tenant") != tenant or rec.get("rpc_method") != "tools/call":
            continue
        # admitted: passed the rate-limit stage (whatever the upstream then answered)
        out.append(Decision(_ts(rec["started_at"]), rec.get("stage") != "ratelimit", rec.get("reason")))
    out.sort(key=lambda d: d.at)
    return out


def window(found: list[Decision], start: float, seconds: float) -> tuple[int, int]:
    """(admitted, refused) among the decisions arriving in [start, start + seconds)."""
    inside = [d for d in found if start <= d.at < start + seconds]
    return sum(d.allowed for d in inside), sum(not d.allowed for d in inside)
