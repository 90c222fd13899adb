"""The active policy: one reference to (snapshot, chain), swapped atomically on a successful reload.

A reload (file change, SIGHUP, admin endpoint) validates everything and builds every filter before the swap;
any failure keeps the last good snapshot, logs why and counts it in `mcp_gateway_policy_reloads_total`.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from gateway.chain import Chain
from gateway.loophold import background
from gateway.policy.loader import PolicyError, load_policy, no_servers_problem
from gateway.policy.snapshot import Snapshot

log = structlog.get_logger("gateway.policy")


@dataclass(frozen=True, slots=True)
class Active:
    snapshot: Snapshot
    chain: Chain


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    version: str
    changed: bool
    errors: tuple[str, ...] = ()


class PolicyStore:
    def __init__(
        self,
        directory: Path,
        build_chain: Callable[[Snapshot], Chain],
        on_result: Callable[[ReloadResult, Snapshot], None] | None = None,
    ) -> None:
        self.directory = directory
        self._build_chain = build_chain
        self._on_result = on_result
        self._active: Active | None = None
        self._lock = asyncio.Lock()
        self._mtimes: dict[str, float] = {}
        # called after each reload that changed the policy, with the new active policy (must not block)
        self.listeners: list[Callable[[Active], object]] = []

    @property
    def active(self) -> Active:
        """The snapshot and chain requests use; only read once the app has started (the policy loads first)."""
        if self._active is None:
            raise RuntimeError("policy not loaded")
        return self._active

    def current_snapshot(self) -> Snapshot | None:
        """The active snapshot, or None before the first load (background tasks start before it)."""
        return self._active.snapshot if self._active is not None else None

    def load_initial(self) -> Snapshot:
        """First load at startup: failure is fatal (there is no last good snapshot to keep)."""
        snapshot = load_policy(self.directory)
        self._active = Active(snapshot, self._build_chain(snapshot))
        self._mtimes = self._scan()
        if self._on_result:
            self._on_result(ReloadResult(True, snapshot.version, True), snapshot)
        return snapshot

    def rebuild(self) -> None:
        """Rebuild the chain for the current snapshot (after a runtime component changed)."""
        snap = self.active.snapshot
        self._active = Active(snap, self._build_chain(snap))

    async def reload(self, trigger: str = "manual") -> ReloadResult:
        async with self._lock:
            self._mtimes = self._scan()
            try:
                # parsing is CPU work on small files; a thread keeps the loop responsive for big key lists
                snapshot = await asyncio.to_thread(load_policy, self.directory)
                emptied = no_servers_problem(snapshot)
                if emptied is not None and self.active.snapshot.servers:
                    raise PolicyError([emptied])
                chain = self._build_chain(snapshot)
            except PolicyError as exc:
                errors = tuple(str(p) for p in exc.problems)
                result = ReloadResult(False, self.active.snapshot.version, False, errors)
                log.error("policy reload failed; keeping last good snapshot", trigger=trigger, errors=list(errors))
            except Exception as exc:
                result = ReloadResult(False, self.active.snapshot.version, False, (f"{type(exc).__name__}: {exc}",))
                log.exception("policy reload failed; keeping last good snapshot", trigger=trigger)
            else:
                changed = snapshot.version != self.active.snapshot.version
                self._active = Active(snapshot, chain)
                result = ReloadResult(True, snapshot.version, changed)
                log.info("policy reloaded", trigger=trigger, version=snapshot.version, changed=changed)
                if changed:
                    for listener in self.listeners:
                        try:
                            listener(self._active)
                        except Exception:  # a listener's failure must not fail the reload that already happened
                            log.exception("reload listener failed")
            if self._on_result:
                self._on_result(result, self.active.snapshot)
            return result

    def _scan(self) -> dict[str, float]:
        out: dict[str, float] = {}
        try:
            for p in self.directory.glob("*.y*ml"):
                try:
                    st = p.stat()
                    out[p.name] = st.st_mtime_ns + st.st_size
                except OSError:
                    continue
        except OSError:
            pass
        return out

    def files_changed(self) -> bool:
        return self._scan() != self._mtimes

    def watch(self, interval: float) -> Coroutine[Any, Any, None]:
        """The polling task's coroutine, its loop holds measured (gateway/loophold.py) as `policy-watcher`."""
        return background(self._watch(interval), "policy-watcher")

    async def _watch(self, interval: float) -> None:
        """Poll the directory (portable, no inotify dependency; a stat of five files per second is nothing)."""
        while True:
            await asyncio.sleep(interval)
            if self.files_changed():
                # let an editor finish writing before reading
                await asyncio.sleep(0.05)
                await self.reload("file_change")

    def install_sighup(self, loop: asyncio.AbstractEventLoop) -> None:
        # the loop keeps only weak references to tasks: hold each reload until it is done, or it may vanish midway
        pending: set[asyncio.Task[ReloadResult]] = set()

        def on_sighup() -> None:
            task = loop.create_task(background(self.reload("sighup"), "policy-reload"))
            pending.add(task)
            task.add_done_callback(pending.discard)

        try:
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / not supported
            log.warning("SIGHUP reload not available in this process")
