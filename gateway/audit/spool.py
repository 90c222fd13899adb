"""AuditSpool: the local append-only file that holds sealed records while the sink is unavailable.

Every batch is fsynced before the writer moves on, so a record that reached the spool survives a crash.

Several gateway processes may share one `audit.spool_path` (workers, or a restart while the old process still
drains), so each process spools to its own file `<spool_path>.<token>` and holds an exclusive `flock` on
`<spool_path>.<token>.lock` for as long as it runs. A spool whose lock nobody holds belongs to a process that has
ended (cleanly with PostgreSQL down, or by crashing): the next process to look adopts it by renaming it into its
own replay files. Renames are atomic, so two processes never replay the same file.

Replay first renames the live spool aside (`<own spool>.replay-<n>`), so records spooled during a replay (the sink
failed again) land in a fresh file. A replay file is deleted only after every record in it was accepted by the
sink; an interrupted replay starts that file again from the top, which is safe because sink writes are idempotent
per record id. Only the pipeline's single writer task touches its spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from gateway.audit.files import append_records, read_chunk

log = structlog.get_logger("gateway.audit")

Writer = Callable[[list[dict[str, Any]]], Awaitable[None]]


_OTHER_BASE = re.compile(r"w\d+|.*-journal")


class AuditSpool:
    def __init__(self, base: Path, token: str | None = None) -> None:
        self.base = base
        self.token = token or f"{os.getpid()}-{secrets.token_hex(3)}"
        self.path = base.with_name(f"{base.name}.{self.token}")
        self._lock_path = base.with_name(f"{base.name}.{self.token}.lock")
        self._lock_fd: int | None = None
        self._has_data = False

    # ------------------------------------------------------------------ ownership

    def open(self) -> int:
        """Take this process's lock and adopt orphaned spools; returns how many files were adopted."""
        self.base.parent.mkdir(parents=True, exist_ok=True)
        # lock under a temporary name, then rename: the lock file is never visible unlocked, so another process
        # can never mistake a starting owner for a dead one
        tmp = self._lock_path.with_name(f".{self._lock_path.name}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(tmp, self._lock_path)
        self._lock_fd = fd
        return self.adopt_orphans()

    def close(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        # the spool files stay if records are left in them: the next process adopts them
        with contextlib.suppress(FileNotFoundError):
            self._lock_path.unlink()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def _token_of(self, name: str) -> tuple[str, str] | None:
        prefix = f"{self.base.name}."
        if not name.startswith(prefix):
            return None
        token, _, kind = name[len(prefix) :].partition(".")
        if _OTHER_BASE.fullmatch(token):
            # `<base>.w<n>...` is worker n's own spool base (gateway/net/workers.py) and `...-journal` a journal
            # directory: another owner's namespace, never an orphan of this one (worker 0 adopted worker 1's live
            # spool and then tried to replay a journal directory)
            return None
        return token, kind

    def owner_alive(self, token: str) -> bool:
        """Whether the process of `token` still runs (the audit journal shares the spool's ownership)."""
        return token == self.token or self._owner_alive(token)

    def _owner_alive(self, token: str) -> bool:
        lock = self.base.with_name(f"{self.base.name}.{token}.lock")
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the lock we may have taken
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        return False

    def adopt_orphans(self) -> int:
        """Move spool files of ended processes (and a spool at the bare base path) into our replay files."""
        adopted = 0
        try:
            names = os.listdir(self.base.parent)
        except FileNotFoundError:
            return 0
        alive: dict[str, bool] = {}
        for name in sorted(names):
            src = self.base.parent / name
            if src.is_dir():
                continue  # spools are files; a directory of the same prefix is someone else's
            if name == self.base.name:
                token = ""
            else:
                parsed = self._token_of(name)
                if parsed is None or parsed[0] == self.token:
                    continue
                token = parsed[0]
                if token not in alive:
                    # removes the lock file of an owner that is gone: a SIGKILLed process leaves its lock behind
                    # even when it had nothing spooled, and nothing else would ever delete it
                    alive[token] = self._owner_alive(token)
                if alive[token] or parsed[1] == "lock":
                    continue
            dest = self.path.with_name(f"{self.path.name}.replay-{time.time_ns()}")
            try:
                os.replace(src, dest)
            except FileNotFoundError:
                continue  # another process adopted it first
            adopted += 1
            self._has_data = True
            log.info("audit spool adopted", file=name)
        return adopted

    # ------------------------------------------------------------------ data

    def _replay_files(self) -> list[Path]:
        return sorted(self.path.parent.glob(f"{self.path.name}.replay-*"))

    def pending(self) -> bool:
        return self._has_data

    def size_bytes(self) -> int:
        total = 0
        for p in [self.path, *self._replay_files()]:
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                continue
        return total

    async def append(self, records: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(append_records, self.path, records)
        self._has_data = True

    def _rotate(self) -> None:
        try:
            if self.path.stat().st_size == 0:
                return
        except FileNotFoundError:
            return
        os.replace(self.path, self.path.with_name(f"{self.path.name}.replay-{time.time_ns()}"))

    async def replay(self, write: Writer, batch_size: int, on_batch: Callable[[int], None] | None = None) -> int:
        """Send every spooled record to `write`, oldest file first; returns how many were sent.

        Raises whatever `write` raises; the file being replayed stays for the next attempt.
        """
        await asyncio.to_thread(self._rotate)
        sent = 0
        for path in self._replay_files():
            offset = 0
            while True:
                records, offset, bad = await asyncio.to_thread(read_chunk, path, offset, batch_size)
                if bad:
                    log.error("audit spool: unreadable lines skipped", file=str(path), lines=bad)
                if not records:
                    break
                await write(records)
                sent += len(records)
                if on_batch is not None:
                    on_batch(len(records))
            await asyncio.to_thread(path.unlink, missing_ok=True)
            log.info("audit spool replayed", file=path.name, records=sent)
        self._has_data = False
        return sent
