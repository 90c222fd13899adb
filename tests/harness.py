"""Test harness: real processes on free loopback ports (gateway, SDK upstreams, private Redis/PostgreSQL).

Everything here starts real components. Fakes belong in unit tests only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HMAC_SECRET = "test-hmac-secret-for-api-keys"
CI = os.environ.get("CI", "").lower() == "true"
# MCP_GATEWAY_TEST_PLAIN_NET=1: every gateway started here runs on aiohttp's server and client and redis-py's pool
# instead of the lean server, the lean client and the Redis multiplexer (docs/foundation.md, `make test`)
PLAIN_NET = os.environ.get("MCP_GATEWAY_TEST_PLAIN_NET", "") == "1"
PLAIN_NET_CONFIG: dict[str, dict[str, Any]] = {
    "http": {"fast_path": False},
    "upstream": {"client": "aiohttp"},
    "redis": {"multiplex": False},
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


# Start-up is 1-2 s on a quiet machine; CI shares 2 cores with four test workers, the stdio churn test's fifty SDK
# server processes among them, and once saw a two-worker gateway not listening after 20 s. This bounds a hang, it
# does not measure start-up.
START_TIMEOUT = 60.0


def wait_port(
    port: int, timeout: float = START_TIMEOUT, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if proc is not None and proc.poll() is not None:
            text = log.read_text()[-4000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}:\n{text}")
        time.sleep(0.05)
    text = log.read_text()[-4000:] if log and log.exists() else ""
    raise TimeoutError(f"nothing listening on {port} after {timeout}s:\n{text}")


def api_key(key_id: str, secret: str = HMAC_SECRET) -> tuple[str, str]:
    """A (full key, stored hash) pair for keys.yaml, hashed with the test HMAC secret."""
    raw = f"mgw_{key_id}_{secrets.token_urlsafe(24)}"
    return raw, hmac.new(secret.encode(), raw.encode(), hashlib.sha256).hexdigest()


@dataclass
class Proc:
    """A child process whose output goes to a log file; stopped with SIGTERM then SIGKILL."""

    argv: list[str]
    log: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        env = dict(os.environ)
        env.update(self.env or {})
        env.setdefault("PYTHONUNBUFFERED", "1")
        fh = self.log.open("ab")
        self.popen = subprocess.Popen(
            self.argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=self.cwd or ROOT, start_new_session=True
        )
        fh.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Upstream:
    proc: Proc
    port: int
    transport: str

    @property
    def url(self) -> str:
        return (
            f"http://127.0.0.1:{self.port}/mcp"
            if self.transport == "streamable-http"
            else f"http://127.0.0.1:{self.port}/sse"
        )

    def stop(self) -> None:
        self.proc.stop()


def start_upstream(
    workdir: Path,
    *,
    transport: str = "streamable-http",
    json_response: bool = False,
    port: int | None = None,
    module: str = "examples.example_server",
    extra_args: list[str] | None = None,
) -> Upstream:
    port = port or free_port()
    argv = [PYTHON, "-m", module, "--port", str(port)]
    if module == "examples.example_server":
        argv += ["--transport", transport]
        if json_response:
            argv.append("--json-response")
    argv += extra_args or []
    log = workdir / f"upstream-{port}.log"
    proc = Proc(argv, log).start()
    wait_port(port, proc=proc.popen, log=log)
    return Upstream(proc, port, transport)


# the headers every Streamable HTTP POST of a raw test client carries, and its `initialize` (2025-06-18)
MCP_POST_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def initialize_request(client: str = "raw", rpc_id: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rpc_id,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": client, "version": "0"}},
    }


def stdio_policies(name: str, stdio: Mapping[str, Any]) -> dict[str, Any]:
    """A policy set with one `transport: stdio` server `name`, owned by and open to tenant `acme`."""
    return {
        "servers.yaml": {"servers": {name: {"transport": "stdio", "owner": "acme", "stdio": dict(stdio)}}},
        "tenants.yaml": {"tenants": {"acme": {"servers": [name]}}},
        "keys.yaml": {"keys": []},
        "limits.yaml": {},
        "access.yaml": {"rules": []},
    }


def default_policies(upstream_url: str, **server_overrides: Any) -> dict[str, Any]:
    """A minimal policy set: one tenant `acme` owning server `example`, one read+write key."""
    server: dict[str, Any] = {"upstreams": [{"url": upstream_url}], "owner": "acme"}
    server.update(server_overrides)
    return {
        "servers.yaml": {"servers": {"example": server}},
        "tenants.yaml": {"tenants": {"acme": {"servers": ["example"]}}},
        "keys.yaml": {"keys": []},
        "limits.yaml": {},
        "access.yaml": {"rules": []},
    }


@dataclass
class Gateway:
    workdir: Path
    port: int
    proc: Proc
    policies_dir: Path
    config_path: Path
    keys: dict[str, str] = field(default_factory=dict)  # key id -> full key

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, server: str = "example") -> str:
        return f"{self.base}/mcp/{server}"

    def auth(self, key_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key_id]}"}

    def write_policies(self, policies: Mapping[str, Any]) -> None:
        for name, content in policies.items():
            text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
            tmp = self.policies_dir / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(self.policies_dir / name)

    def stop(self) -> int | None:
        return self.proc.stop()

    def logs(self) -> str:
        return self.proc.output()


def start_gateway(
    workdir: Path,
    policies: Mapping[str, Any],
    *,
    keys: Mapping[str, Mapping[str, Any]] | None = None,
    config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    wait: bool = True,
) -> Gateway:
    """Start `python -m gateway run` with its own config and policy directory under `workdir`.

    `keys` maps key id -> key fields (tenant, scopes, ...); each gets a fresh secret, hashed into keys.yaml.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    pdir = workdir / "policies"
    pdir.mkdir(exist_ok=True)
    made: dict[str, str] = {}
    pol = dict(policies)
    if keys:
        entries = list(pol.get("keys.yaml", {}).get("keys", []))
        for kid, fields in keys.items():
            raw, digest = api_key(kid)
            made[kid] = raw
            entries.append({"id": kid, "hash": digest, **fields})
        pol["keys.yaml"] = {"keys": entries}
    secret_file = workdir / "hmac-secret"
    secret_file.write_text(HMAC_SECRET)
    cfg: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "policies_dir": str(pdir),
        "policy_poll_seconds": 0.2,
        "audit": {"sink": "file", "path": str(workdir / "audit.jsonl"), "spool_path": str(workdir / "spool.jsonl")},
        "api_keys": {"hmac_secret": {"file": str(secret_file)}},
        "logging": {"level": "info", "format": "json"},
    }
    if PLAIN_NET:
        # the hand-written network code off (make test's second e2e pass); a test's own config still wins
        for section, values in PLAIN_NET_CONFIG.items():
            cfg[section] = dict(values)
    for k, v in (config or {}).items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    cfg_path = workdir / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log = workdir / f"gateway-{port}.log"
    proc = Proc([PYTHON, "-m", "gateway", "run", "--config", str(cfg_path)], log, env=env)
    gw = Gateway(workdir, port, proc, pdir, cfg_path, made)
    gw.write_policies(pol)
    proc.start()
    if wait:
        wait_port(port, proc=proc.popen, log=log)
    return gw


# ---------------------------------------------------------------- private service instances (fault injection)


@dataclass
class RedisInstance:
    port: int
    proc: Proc

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.kill()

    def start(self) -> None:
        self.proc.popen = None
        self.proc.start()
        wait_port(self.port, proc=self.proc.popen, log=self.proc.log)


def start_redis(workdir: Path, port: int | None = None) -> RedisInstance:
    """A private redis-server on a free port (never the machine's shared one)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed")
    port = port or free_port()
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = Proc(argv, workdir / f"redis-{port}.log").start()
    wait_port(port, proc=proc.popen, log=proc.log)
    return RedisInstance(port, proc)


def _pg_bin(name: str) -> str:
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / name).exists():
            return str(base / name)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found")
    return found


@dataclass
class PostgresInstance:
    port: int
    datadir: Path

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        cmd = [_pg_bin("pg_ctl"), "-D", str(self.datadir), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.datadir} -c fsync=off"
        self._ctl("-w", "-l", str(self.datadir / "server.log"), "-o", opts, "start")

    def stop(self, mode: str = "immediate") -> None:
        self._ctl("-w", "-m", mode, "stop")

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.datadir, ignore_errors=True)


def start_postgres() -> PostgresInstance:
    """A private PostgreSQL cluster (initdb + pg_ctl) in a temporary directory on a free port."""
    datadir = Path(tempfile.mkdtemp(prefix="mgw-pg-"))
    if os.geteuid() == 0:
        shutil.chown(datadir, "postgres", "postgres")
    cmd = [_pg_bin("initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    inst = PostgresInstance(free_port(), datadir)
    inst.start()
    return inst


@contextlib.contextmanager
def running(*procs: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.stop()


class ThreadedApp:
    """An aiohttp app served on 127.0.0.1:`port` from its own event loop in a thread, so it outlives every test's
    loop (a JWKS endpoint, a fake identity provider). `routes` adds the app's routes."""

    def __init__(self, port: int, routes: Callable[[web.Application], None]) -> None:
        self.port = port
        self._routes = routes

    def start(self) -> None:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            app = web.Application()
            self._routes(app)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            ready.set()

        def run() -> None:
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def metric_sample(text: str, name: str, **labels: str) -> float:
    """Prometheus text: the sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$", line)
        if m is None or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(4))
    return total


async def delete_redis_prefix(url: str, prefix: str) -> None:
    """Delete a test's keys (`prefix*`) with a client of its own: the clients under test may have short socket
    timeouts on purpose, and a SCAN of the shared Redis while the whole suite loads the machine can take longer
    (a teardown failed on a 0.25 s timeout in CI)."""
    client = aioredis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=10)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
