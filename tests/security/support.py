"""Helpers (no tests here) for the adversarial suite: the recording upstream, raw HTTP/1.x exchanges that check
every answer for well-formedness, a JWKS server with several documents (and one an attacker controls), and the
Redis + PostgreSQL backend of a gateway under test.

Read timeouts here only guard against a hang; no duration is ever asserted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import re
import secrets
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psutil
from aiohttp import web
from multidict import CIMultiDict

from gateway.db.migrate import migrate
from gateway.db.scratch import with_db
from tests.conftest import SHARED_PG_DSN, SHARED_REDIS_URL
from tests.conftest import _require as require
from tests.harness import PYTHON, Gateway, Proc, ThreadedApp, free_port, wait_port

GUARD = 15.0  # hang guard for one read, never a timing assertion
STATUS_LINE = re.compile(r"^HTTP/(1\.[01]) (\d{3}) (.*)$")
T = TypeVar("T")

# ----------------------------------------------------------------------------------------- recording upstream


@dataclass
class RecordingUpstream:
    """A `tests.security.recording_upstream` process and the file it records into."""

    proc: Proc
    port: int
    transport: str
    record: Path

    @property
    def url(self) -> str:
        path = {"streamable-http": "/mcp", "sse": "/sse", "websocket": "/ws"}[self.transport]
        scheme = "ws" if self.transport == "websocket" else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.proc.stop()

    def entries(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]

    def mark(self) -> int:
        """Where the record stands now: pass it to `since` to see only what came afterwards."""
        return len(self.entries())

    def since(self, mark: int) -> list[dict[str, Any]]:
        return self.entries()[mark:]

    def requests_since(self, mark: int) -> list[dict[str, Any]]:
        """The requests (HTTP requests and WebSocket handshakes) received after `mark`, bodies and frames aside."""
        return [e for e in self.since(mark) if e["kind"] in ("http", "ws")]


def start_recording_upstream(
    workdir: Path, *, transport: str = "streamable-http", json_response: bool = False, set_cookie: bool = False
) -> RecordingUpstream:
    port = free_port()
    record = workdir / f"record-{transport}-{port}.jsonl"
    argv = [PYTHON, "-m", "tests.security.recording_upstream", "--port", str(port), "--record", str(record)]
    argv += ["--transport", transport]
    if json_response:
        argv.append("--json-response")
    if set_cookie:
        argv.append("--set-cookie")
    log = workdir / f"recording-upstream-{port}.log"
    proc = Proc(argv, log).start()
    wait_port(port, proc=proc.popen, log=log)
    return RecordingUpstream(proc, port, transport, record)


# ----------------------------------------------------------------------------------------- raw HTTP/1.x


@dataclass
class RawResponse:
    version: str
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        """The JSON-RPC message of the body (a JSON document, or the last `data:` line of an event stream)."""
        if self.headers.get("Content-Type", "").startswith("text/event-stream"):
            datas = [line[5:].strip() for line in self.body.decode().splitlines() if line.startswith("data:")]
            return json.loads(datas[-1]) if datas else None
        return json.loads(self.body)

    @property
    def is_json(self) -> bool:
        return self.headers.get("Content-Type", "").startswith(("application/json", "text/event-stream"))


async def read_one(reader: asyncio.StreamReader) -> RawResponse | None:
    """One HTTP/1.x response, checked for well-formedness (status line, `name: value` header lines, exactly one
    framing); None when the server closed (or reset) the connection at a response boundary."""
    try:
        async with asyncio.timeout(GUARD):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                assert exc.partial == b"", f"connection closed inside a response head: {exc.partial[:300]!r}"
                return None
            lines = head[:-4].decode("latin-1").split("\r\n")
            m = STATUS_LINE.match(lines[0])
            assert m is not None, f"malformed status line {lines[0]!r}"
            headers: CIMultiDict[str] = CIMultiDict()
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                assert sep and name and name == name.strip() and "\r" not in line, f"malformed header {line!r}"
                headers.add(name, value.strip())
            lengths = headers.getall("Content-Length", [])
            chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
            assert len(lengths) <= 1, f"several Content-Length headers: {lengths}"
            assert not (lengths and chunked), "both Content-Length and chunked framing in one answer"
            status = int(m.group(2))
            if 100 <= status < 200 or status in (204, 304):
                body = b""
            elif lengths:
                body = await reader.readexactly(int(lengths[0]))
            elif chunked:
                parts = []
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
                    chunk = await reader.readexactly(size + 2)
                    assert chunk.endswith(b"\r\n"), f"chunk not ended by CRLF: {chunk[-10:]!r}"
                    if size == 0:
                        break
                    parts.append(chunk[:-2])
                body = b"".join(parts)
            else:
                body = await reader.read()  # delimited by the end of the connection
    except ConnectionError:
        return None
    return RawResponse(m.group(1), status, headers, body)


async def closed(reader: asyncio.StreamReader) -> bool:
    """True when the server has closed its side with no further bytes (EOF or reset); False when it keeps the
    connection open past the guard. Bytes after the answers are an assertion error: a second, unexpected answer."""
    try:
        async with asyncio.timeout(GUARD):
            rest = await reader.read()
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    assert rest == b"", f"unexpected bytes after the answers: {rest[:300]!r}"
    return True


@contextlib.asynccontextmanager
async def raw_connection(port: int) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def http_request(
    port: int,
    body: bytes,
    *,
    path: str = "/mcp/example",
    method: str = "POST",
    headers: list[tuple[str, str]] | None = None,
    content_length: bool = True,
) -> bytes:
    """A request in the usual shape (one Host, JSON body, `Content-Length`), with `headers` appended."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += ["Content-Type: application/json", "Accept: application/json, text/event-stream"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# ----------------------------------------------------------------------------------------- JWKS


@dataclass
class JwksServer:
    """Serves JWKS documents at `/<name>` from its own event loop in a thread (it outlives every test's loop), and
    counts the fetches of each, so a test can tell a document the gateway must never fetch was never fetched."""

    docs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fetches: dict[str, int] = field(default_factory=dict)
    port: int = field(default_factory=free_port)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        async def jwks(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            self.fetches[name] = self.fetches.get(name, 0) + 1
            return web.json_response({"keys": list(self.docs.get(name, []))})

        self._app = ThreadedApp(self.port, lambda app: app.router.add_get("/{name}", jwks))
        self._app.start()

    def stop(self) -> None:
        self._app.stop()


# ----------------------------------------------------------------------------------------- backends


@dataclass
class Backend:
    """How a gateway under test keeps its state: `embedded` (in-process, audit to a file) or `redis_pg` (sessions
    and limits in Redis, audit rows and API keys in PostgreSQL)."""

    name: str
    config: dict[str, Any]
    dsn: str | None = None

    async def audit_rows(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """The PostgreSQL audit rows of one request, or all of them (as the auditor sees them)."""
        assert self.dsn is not None
        conn = await asyncpg.connect(self.dsn, timeout=10)
        try:
            if request_id is None:
                rows = await conn.fetch("SELECT * FROM audit_records")
            else:
                rows = await conn.fetch("SELECT * FROM audit_records WHERE request_id = $1", request_id)
        finally:
            await conn.close()
        return [dict(r) for r in rows]


@contextlib.contextmanager
def backend(name: str) -> Iterator[Backend]:
    """The config of a gateway for `name`; for `redis_pg` a migrated database of its own on the shared PostgreSQL
    (dropped afterwards) and a Redis key prefix of its own on the shared Redis (never flushed)."""
    if name == "embedded":
        yield Backend(name, {})
        return
    require("Redis", 6379)
    require("PostgreSQL", 5432)
    name = f"mgw_security_{secrets.token_hex(6)}"
    dsn = with_db(SHARED_PG_DSN, name)
    _in_thread(_create_database(name, dsn))
    try:
        config = {
            "redis": {"url": SHARED_REDIS_URL, "key_prefix": f"mgw-sec-{secrets.token_hex(4)}:"},
            "postgres": {"dsn": dsn},
            "audit": {"sink": "postgres", "flush_interval": 0.05},
        }
        yield Backend(name, config, dsn)
    finally:
        _in_thread(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(SHARED_PG_DSN, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _create_database(name: str, dsn: str) -> None:
    await _admin(f'CREATE DATABASE "{name}"')
    await migrate(dsn)


def _in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a loop of its own in another thread: module fixtures are synchronous, and
    the test's event loop (pytest-asyncio's) must not be replaced or closed by them."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(120)


# ----------------------------------------------------------------------------------------- logs


def logged(fmt: str, emit: Callable[[], None]) -> str:
    """What `emit` logs through gateway.logging's configuration (structlog's own loggers and the standard
    library's), into a buffer; the previous configuration is restored after."""
    import io
    import logging

    import structlog

    from gateway.logging import configure_logging

    saved, root = structlog.get_config(), logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    buf = io.StringIO()
    try:
        configure_logging("info", fmt)
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(buf))
        for handler in root.handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(buf)
        emit()
    finally:
        structlog.configure(**saved)
        root.handlers[:], root.level = handlers, root_level
    return buf.getvalue()


# ----------------------------------------------------------------------------------------- a gateway under test


def gateway_rss(gw: Gateway) -> int:
    """The gateway process's resident memory, in bytes."""
    return int(psutil.Process(gw.proc.pid).memory_info().rss)


def audit_records(gw: Gateway) -> list[dict[str, Any]]:
    """What the gateway's file audit sink holds so far (none before its first batch)."""
    path = gw.workdir / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
