"""The stdio processes of one gateway process: who may start one, the sessions on them, restarts, idle ends.

* **Caps.** A start is reserved before anything is executed, under the server's `max_processes`, and per tenant and
  per credential (`max_processes_per_tenant`, `max_processes_per_key`); beyond, a clear 429 (`process_limit`).
  A place comes back when the process has exited and been reaped.
* **Crashes.** A process that exits on its own fails what is in flight on it (the clients get a JSON-RPC error)
  and ends its sessions (per-session processes; a shared process is restarted and its sessions go on). The next
  start waits `restart_backoff_seconds`, doubled per crash in a row (a process that lived longer than twice the
  longest backoff resets the count), counted per credential for per-session processes (one caller crashing its own
  processes never delays another's) and per server for a shared one; a wait longer than `MAX_START_WAIT` is
  refused with 503 and `Retry-After` instead.
* **Ends.** DELETE, the idle timeout (no request and no open GET stream for `idle_timeout_seconds`), a policy reload
  that removes the server or changes its `stdio` block, and the gateway's own stop: each stops the process with
  SIGTERM then SIGKILL (gateway/upstream/stdio/process.py) and reaps it.

Sessions and processes live in this gateway process only: with several replicas, a session must come back to the
replica that holds its process (the others answer 404 and the client re-initializes).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from gateway.errors import ConcurrencyLimited, ServiceUnavailable
from gateway.loophold import background
from gateway.policy.snapshot import Snapshot
from gateway.policy.stdio import StdioPolicy
from gateway.upstream.stdio.launch import launch_spec
from gateway.upstream.stdio.metrics import StdioMetrics
from gateway.upstream.stdio.mux import Channel, JsonObj, Mux
from gateway.upstream.stdio.process import SpawnFailed, StdioProcess

log = structlog.get_logger("gateway.upstream.stdio")

# a start that would wait longer than this for the restart backoff is refused (503, Retry-After) instead
MAX_START_WAIT = 5.0
REAP_INTERVAL = 1.0
SAMPLE_INTERVAL = 5.0
LIMIT_STAGE = "session"
GATEWAY_CLIENT = {"name": "mcp-gateway", "version": "1"}
INIT_VERSION = "2025-06-18"


@dataclass(frozen=True, slots=True)
class Owner:
    """What a process counts against: its server, the caller's tenant and credential (None for a shared one)."""

    server: str
    tenant: str | None = None
    key: str | None = None


class Worker:
    """A live process and the JSON-RPC state on it."""

    def __init__(self, process: StdioProcess, mux: Mux, owner: Owner, policy: StdioPolicy) -> None:
        self.process = process
        self.mux = mux
        self.owner = owner
        self.policy = policy
        # what a shared process answered the gateway's own `initialize`
        self.init_result: JsonObj | None = None

    async def send(self, msg: JsonObj) -> None:
        await self.process.send(msg)

    async def call(self, method: str, params: JsonObj | None, timeout: float) -> JsonObj:
        """The gateway's own request (initialize of a shared process, health ping): its answer message."""
        msg, fut = self.mux.internal_request(method, params)
        try:
            await self.send(msg)
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self.mux.forget_internal(fut)


@dataclass(slots=True)
class StdioSession:
    server: str
    session_id: str
    channel: Channel
    worker: Worker
    # a per-session process ends with its session; a shared one does not
    owns_process: bool
    idle_timeout: float
    last_used: float = field(default_factory=time.monotonic)

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def busy(self) -> bool:
        stream = self.channel.stream
        return bool(self.channel.exchanges) or (stream is not None and not stream.closed)


@dataclass(slots=True)
class _Backoff:
    streak: int = 0
    not_before: float = 0.0


class StdioManager:
    def __init__(self, metrics: StdioMetrics, clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self._clock = clock
        self._sessions: dict[tuple[str, str], StdioSession] = {}
        self._workers: set[Worker] = set()
        self._shared: dict[str, Worker] = {}
        self._shared_locks: dict[str, asyncio.Lock] = {}
        self._per_server: Tally[str] = Tally()
        self._per_tenant: Tally[tuple[str, str]] = Tally()
        self._per_key: Tally[tuple[str, str]] = Tally()
        # (server, credential) of a per-session process, (server, None) of a shared one: one caller crashing its
        # own processes slows only its own next starts, never another tenant's
        self._backoff: dict[tuple[str, str | None], _Backoff] = {}
        self._policies: dict[str, StdioPolicy] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: set[asyncio.Task[None]] = set()
        self._closed = False

    # ------------------------------------------------------------------ queries

    def session(self, server: str, session_id: str) -> StdioSession | None:
        return self._sessions.get((server, session_id))

    @property
    def running(self) -> int:
        return len(self._workers)

    def workers(self, server: str) -> int:
        return self._per_server[server]

    # ------------------------------------------------------------------ caps

    def _reserve(self, owner: Owner, policy: StdioPolicy) -> None:
        limit: str | None = None
        cap = 0
        if self._per_server[owner.server] >= policy.max_processes:
            limit, cap = "server_processes", policy.max_processes
        elif owner.tenant is not None and self._per_tenant[(owner.server, owner.tenant)] >= (
            policy.max_processes_per_tenant
        ):
            limit, cap = "tenant_processes", policy.max_processes_per_tenant
        elif owner.key is not None and self._per_key[(owner.server, owner.key)] >= policy.max_processes_per_key:
            limit, cap = "key_processes", policy.max_processes_per_key
        if limit is not None:
            self.metrics.refused.labels(owner.server, limit).inc()
            raise ConcurrencyLimited(
                f"too many processes of this stdio server ({limit}, cap {cap}); end a session (DELETE) first",
                reason="process_limit",
                stage=LIMIT_STAGE,
                retry_after=30.0,
                data={"limit": limit, "cap": cap},
            )
        self._per_server[owner.server] += 1
        if owner.tenant is not None:
            self._per_tenant[(owner.server, owner.tenant)] += 1
        if owner.key is not None:
            self._per_key[(owner.server, owner.key)] += 1

    def _release(self, owner: Owner) -> None:
        _down(self._per_server, owner.server)
        if owner.tenant is not None:
            _down(self._per_tenant, (owner.server, owner.tenant))
        if owner.key is not None:
            _down(self._per_key, (owner.server, owner.key))

    async def _wait_backoff(self, owner: Owner) -> None:
        server = owner.server
        state = self._backoff.get((server, owner.key))
        if state is None:
            return
        wait = state.not_before - self._clock()
        if wait <= 0:
            return
        if wait > MAX_START_WAIT:
            self.metrics.refused.labels(server, "restart_backoff").inc()
            raise ServiceUnavailable(
                "the stdio server crashed repeatedly; its next start is delayed",
                reason="process_restart_backoff",
                retry_after=wait,
                stage=LIMIT_STAGE,
            )
        await asyncio.sleep(wait)

    # ------------------------------------------------------------------ processes

    async def spawn(self, owner: Owner, policy: StdioPolicy, base_dir: Path, label: str, shared: bool) -> Worker:
        """Reserve a place, wait out a restart backoff, start the process. ConcurrencyLimited /
        ServiceUnavailable when refused, SpawnFailed when it cannot be executed."""
        if self._closed:
            raise ServiceUnavailable("the gateway is stopping", reason="shutting_down", retry_after=1.0)
        self._reserve(owner, policy)
        try:
            await self._wait_backoff(owner)
            # secret files read, PATH searched, the working directory checked: file system calls, off the loop
            spec = await asyncio.to_thread(launch_spec, policy, base_dir)
            mux = Mux(shared=shared)
            holder: list[Worker] = []

            def on_message(msg: object, size: int) -> None:
                replies = mux.incoming(msg, size)
                if replies and holder:
                    for reply in replies:
                        self.fire(holder[0].send(reply))

            def on_exit(returncode: int | None, crashed: bool) -> None:
                if holder:
                    self._exited(holder[0], returncode, crashed)

            def on_stderr(logged: bool) -> None:
                self.metrics.stderr_lines.labels(owner.server, "logged" if logged else "dropped").inc()

            process = StdioProcess(owner.server, label, spec, on_message, on_exit, on_stderr)
            worker = Worker(process, mux, owner, policy)
            holder.append(worker)
            await process.start()
        except BaseException as exc:
            self._release(owner)
            if isinstance(exc, SpawnFailed):
                self.metrics.starts.labels(owner.server, "failed").inc()
                log.error("stdio server could not be started", server=owner.server, error=str(exc))
            raise
        self._workers.add(worker)
        self.metrics.starts.labels(owner.server, "started").inc()
        self.metrics.processes.labels(owner.server).inc()
        log.info("stdio server process started", server=owner.server, session=label, pid=process.pid)
        return worker

    def _exited(self, worker: Worker, returncode: int | None, crashed: bool) -> None:
        """Called once the process is reaped: its place comes back, its sessions end or go on."""
        server = worker.owner.server
        if worker in self._workers:
            self._workers.discard(worker)
            self.metrics.processes.labels(server).dec()
            self._release(worker.owner)
        if crashed:
            self.metrics.crashes.labels(server).inc()
            state = self._backoff.setdefault((server, worker.owner.key), _Backoff())
            lived = self._clock() - worker.process.started_at
            state.streak = 1 if lived > 2 * worker.policy.max_restart_backoff_seconds else state.streak + 1
            delay = min(
                worker.policy.max_restart_backoff_seconds,
                worker.policy.restart_backoff_seconds * (2 ** (state.streak - 1)),
            )
            state.not_before = self._clock() + delay
        worker.mux.fail(
            "upstream_process_exited",
            f"the stdio server process exited (status {returncode}) before it answered",
        )
        if self._shared.get(server) is worker:
            del self._shared[server]
        for channel in list(worker.mux.channels):
            if channel.session_id is not None and not worker.mux.shared:
                self._sessions.pop((server, channel.session_id), None)

    def fire(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(_quiet(coro))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def stop_worker(self, worker: Worker) -> None:
        """Stop the process in the background (SIGTERM, SIGKILL, reaped)."""
        self.fire(worker.process.stop())

    # ------------------------------------------------------------------ sessions

    def new_session_id(self) -> str:
        return secrets.token_urlsafe(24)

    def add_session(self, server: str, worker: Worker, channel: Channel, owns: bool, policy: StdioPolicy) -> None:
        assert channel.session_id is not None
        worker.mux.channels.add(channel)
        self._sessions[(server, channel.session_id)] = StdioSession(
            server, channel.session_id, channel, worker, owns, policy.idle_timeout_seconds
        )

    def rebind(self, sess: StdioSession, worker: Worker) -> None:
        """Move a session of a shared process to its successor (the process restarted)."""
        if sess.worker is worker:
            return
        sess.worker.mux.channels.discard(sess.channel)
        sess.worker = worker
        sess.channel.closed = False
        if sess.channel.stream is not None and sess.channel.stream.closed:
            sess.channel.stream = None
        worker.mux.channels.add(sess.channel)

    def end_session(self, server: str, session_id: str) -> bool:
        sess = self._sessions.pop((server, session_id), None)
        if sess is None:
            return False
        sess.worker.mux.channels.discard(sess.channel)
        sess.channel.close()
        if sess.owns_process:
            self.stop_worker(sess.worker)
        return True

    async def shared_worker(self, server: str, policy: StdioPolicy, base_dir: Path) -> Worker:
        """The server's shared process, started and initialized by the gateway itself when there is none."""
        worker = self._shared.get(server)
        if worker is not None and worker.process.alive and worker.policy == policy:
            return worker
        lock = self._shared_locks.setdefault(server, asyncio.Lock())
        async with lock:
            worker = self._shared.get(server)
            if worker is not None and worker.process.alive and worker.policy == policy:
                return worker
            if worker is not None:
                # its policy changed: new sessions go to a process started from the new one
                del self._shared[server]
                self.stop_worker(worker)
            worker = await self.spawn(Owner(server), policy, base_dir, "shared", shared=True)
            try:
                worker.init_result = await initialize(worker, policy.start_timeout_seconds)
            except BaseException:
                self.stop_worker(worker)
                raise
            self._shared[server] = worker
            return worker

    async def ping(self, server: str, policy: StdioPolicy, base_dir: Path, timeout: float) -> None:
        """MCP `ping` on the shared process (started when there is none); raises when it does not answer."""
        # a start slower than the check's timeout goes on (shielded): the next check, or a client, finds it ready
        worker = await asyncio.shield(self.shared_worker(server, policy, base_dir))
        answer = await worker.call("ping", None, timeout)
        if "result" not in answer:
            raise ConnectionError(f"ping answered with an error: {answer.get('error')}")

    # ------------------------------------------------------------------ reloads, idle ends, sampling

    def sync(self, snapshot: Snapshot) -> None:
        """Follow a reload: the processes of a server that left the policy, or whose `stdio` block changed, end."""
        policies = {name: s.stdio for name, s in snapshot.servers.items() if s.stdio is not None}
        for name, old in self._policies.items():
            if policies.get(name) != old:
                self._end_server(name)
        self._policies = policies

    def _end_server(self, server: str) -> None:
        for key in [k for k in self._sessions if k[0] == server]:
            self.end_session(*key)
        shared = self._shared.pop(server, None)
        if shared is not None:
            self.stop_worker(shared)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(background(self._reap_loop(), "stdio"), name="stdio-reaper"),
            asyncio.create_task(background(self._sample_loop(), "stdio"), name="stdio-sampler"),
        ]

    async def stop(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for key in list(self._sessions):
            self.end_session(*key)
        self._shared.clear()
        workers = list(self._workers)
        await asyncio.gather(*(w.process.stop() for w in workers), return_exceptions=True)
        if self._stopping:
            await asyncio.gather(*list(self._stopping), return_exceptions=True)

    def reap_idle(self) -> int:
        now = time.monotonic()
        ended = 0
        for key, sess in list(self._sessions.items()):
            if not sess.busy() and now - sess.last_used > sess.idle_timeout:
                log.info("stdio session ended idle", server=sess.server)
                self.end_session(*key)
                ended += 1
        return ended

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL)
            self.reap_idle()

    async def _sample_loop(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            workers = [(w.owner.server, w.process) for w in self._workers]
            servers = {s for s, _ in workers} | set(self._policies)
            usage = await asyncio.to_thread(_usage, workers)
            rss: Tally[str] = Tally()
            cpu: dict[str, float] = dict.fromkeys(servers, 0.0)
            for server, u in usage:
                if u is not None:
                    rss[server] += u[0]
                    cpu[server] += u[1]
            for server in servers:
                self.metrics.rss.labels(server).set(rss[server])
                self.metrics.cpu.labels(server).set(cpu[server])


def _usage(workers: list[tuple[str, StdioProcess]]) -> list[tuple[str, tuple[int, float] | None]]:
    return [(server, process.usage()) for server, process in workers]


async def initialize(worker: Worker, timeout: float, capabilities: JsonObj | None = None) -> JsonObj:
    """The gateway's own MCP handshake with a process (shared ones, and per-request ones of 2026-07-28 calls)."""
    params = {"protocolVersion": INIT_VERSION, "capabilities": capabilities or {}, "clientInfo": GATEWAY_CLIENT}
    answer = await worker.call("initialize", params, timeout)
    result = answer.get("result")
    if not isinstance(result, dict):
        raise ConnectionError(f"initialize answered with an error: {answer.get('error')}")
    await worker.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    return result


def _down(tally: Tally[Any], key: Any) -> None:
    if tally[key] > 1:
        tally[key] -= 1
    else:
        tally.pop(key, None)


async def _quiet(coro: Any) -> None:
    with contextlib.suppress(Exception):
        await coro
