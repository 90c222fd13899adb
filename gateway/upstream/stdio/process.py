"""One stdio MCP server process: started from the operator's launch spec, newline-delimited JSON-RPC on its
stdin/stdout, stderr lines to the gateway's log, stopped gracefully and always reaped.

The child runs in a process group of its own (`start_new_session`), so a launcher such as `npx` or `uvx` and
everything it starts are signalled together. Stopping closes stdin (the MCP stdio shutdown), then sends SIGTERM to
the group, then SIGKILL after the grace period, and waits for the exit status in every case: no zombie is left,
whatever the child does. A process that exits on its own is reported to `on_exit` (a crash unless the gateway was
stopping it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import orjson
import structlog

from gateway.loophold import background

log = structlog.get_logger("gateway.upstream.stdio")

# how long a process that had its stdin closed may take to exit before it gets SIGTERM
_STDIN_GRACE = 0.5
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """Everything `execve` gets, resolved from the policy (gateway/upstream/stdio/launch.py)."""

    command: str
    args: tuple[str, ...]
    cwd: str
    env: Mapping[str, str]
    max_message_bytes: int
    max_log_line: int
    log_lines_per_second: float
    stop_grace: float


class SpawnFailed(Exception):
    """The program could not be started (not found, not executable, bad cwd)."""


class _LineBudget:
    """Token bucket for logged output lines (stderr, stray stdout): a burst of 5 s worth, then `rate` per second."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens", "dropped")

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._burst = max(1.0, rate * 5)
        self._tokens = self._burst
        self._last = time.monotonic()
        self.dropped = 0

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.dropped += 1
        return False


class StdioProcess:
    """A started child. `send()` writes one JSON-RPC message; `on_message` gets every message it writes (parsed,
    with its line's size in bytes), `on_exit(returncode, crashed)` is called once when it is gone and reaped."""

    def __init__(
        self,
        server: str,
        label: str,
        spec: LaunchSpec,
        on_message: Callable[[object, int], None],
        on_exit: Callable[[int | None, bool], None],
        on_stderr: Callable[[bool], None] | None = None,
    ) -> None:
        self.server = server
        # the session (or "shared") named in the log lines of this process
        self.label = label
        self.spec = spec
        self._on_message = on_message
        self._on_exit = on_exit
        self._on_stderr = on_stderr
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._write_lock = asyncio.Lock()
        self.stopping = False
        self.exited = asyncio.Event()
        self.returncode: int | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and not self.exited.is_set()

    async def start(self) -> None:
        spec = self.spec
        try:
            self._proc = await asyncio.create_subprocess_exec(
                spec.command,
                *spec.args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=spec.cwd,
                env=dict(spec.env),
                start_new_session=True,
                close_fds=True,
                limit=spec.max_message_bytes,
            )
        except OSError as exc:
            raise SpawnFailed(f"{type(exc).__name__}: {exc.strerror or exc}") from None
        self.started_at = time.monotonic()
        name = f"stdio:{self.server}"
        self._tasks = [
            asyncio.create_task(background(self._read_stdout(), "stdio"), name=name),
            asyncio.create_task(background(self._read_stderr(), "stdio"), name=name),
            asyncio.create_task(self._wait(), name=name),
        ]

    async def send(self, message: object) -> None:
        """Write one message; raises ConnectionError when the process is gone."""
        proc = self._proc
        if proc is None or proc.stdin is None or self.exited.is_set() or self.stopping:
            raise ConnectionResetError("stdio process is not running")
        data = orjson.dumps(message) + b"\n"
        async with self._write_lock:
            try:
                proc.stdin.write(data)
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError, RuntimeError) as exc:
                raise ConnectionResetError(f"stdio process closed its stdin: {type(exc).__name__}") from None

    async def _read_stdout(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        reader = proc.stdout
        # stray (non-JSON) lines are logged under the same rate as stderr's: a flood must not flood the log (red team)
        budget = _LineBudget(self.spec.log_lines_per_second)
        while True:
            try:
                line = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                log.warning(
                    "stdio server wrote a message over max_message_bytes; stopping it",
                    server=self.server,
                    session=self.label,
                )
                asyncio.get_running_loop().create_task(self.stop())
                return
            if not line:
                return
            line = line.strip()
            if not line:
                continue
            try:
                msg = orjson.loads(line)
            except orjson.JSONDecodeError:
                # the MCP stdio transport forbids anything but messages on stdout; a stray line is logged, not fatal
                if budget.take():
                    self._log_line(line[: self.spec.max_log_line].decode("utf-8", "replace"), stream="stdout")
                continue
            try:
                self._on_message(msg, len(line))
            except Exception:
                log.exception("stdio message handler failed", server=self.server, session=self.label)

    async def _read_stderr(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stderr is not None
        reader = proc.stderr
        cap = self.spec.max_log_line
        budget = _LineBudget(self.spec.log_lines_per_second)
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                line = exc.partial
                if not line:
                    break
            except asyncio.LimitOverrunError as exc:
                # a line longer than the reader's buffer: keep its start, skip the rest
                line = await reader.readexactly(exc.consumed)
            if budget.take():
                text = line[:cap].decode("utf-8", "replace").rstrip("\r\n")
                if len(line) > cap:
                    text += " [cut]"
                self._log_line(text, stream="stderr")
                if self._on_stderr is not None:
                    self._on_stderr(True)
            elif self._on_stderr is not None:
                self._on_stderr(False)
        if budget.dropped:
            log.info("stdio server stderr lines dropped over the rate", server=self.server, dropped=budget.dropped)

    def _log_line(self, text: str, stream: str) -> None:
        log.info("stdio server output", server=self.server, session=self.label, stream=stream, line=text)

    async def _wait(self) -> None:
        proc = self._proc
        assert proc is not None
        try:
            self.returncode = await proc.wait()
        finally:
            self.exited.set()
            crashed = not self.stopping
            if crashed:
                log.warning(
                    "stdio server process exited", server=self.server, session=self.label, returncode=self.returncode
                )
            # the group may outlive its leader (a launcher's children): nothing of it may stay behind
            self._signal_group(signal.SIGKILL)
            try:
                self._on_exit(self.returncode, crashed)
            except Exception:
                log.exception("stdio exit handler failed", server=self.server)

    def _signal_group(self, sig: int) -> None:
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    async def stop(self) -> None:
        """Close stdin, SIGTERM the group, SIGKILL it after the grace period; return once the child is reaped."""
        proc = self._proc
        if proc is None:
            return
        self.stopping = True
        if not self.exited.is_set():
            if proc.stdin is not None:
                with contextlib.suppress(Exception):
                    proc.stdin.close()
            if not await self._exited_within(min(_STDIN_GRACE, self.spec.stop_grace)):
                self._signal_group(signal.SIGTERM)
                if not await self._exited_within(self.spec.stop_grace):
                    self._signal_group(signal.SIGKILL)
                    await self.exited.wait()
        for task in self._tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _exited_within(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self.exited.wait()
        except TimeoutError:
            return False
        return True

    def usage(self) -> tuple[int, float] | None:
        """(resident bytes, CPU seconds) from /proc, or None when it cannot be read (not Linux, gone)."""
        pid = self.pid
        if pid is None or self.exited.is_set():
            return None
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                rss_pages = int(f.read().split()[1])
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except (OSError, ValueError, IndexError):
            return None
        # the command name in parentheses may hold spaces: the fields after its closing parenthesis
        fields = stat[stat.rfind(b")") + 2 :].split()
        try:
            cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        except (ValueError, IndexError):
            return None
        return rss_pages * _PAGE, cpu
