"""`mcp-gateway ARGS` run in a forked copy of the test process instead of a new interpreter.

Why: a new interpreter spends ~1.2 s of CPU importing the gateway before it reads its arguments, and the bad-input
cases of tests/e2e/test_cli_errors.py run fifty of them on a 2-core machine where `make test` must stay under 15
minutes. The fork has everything imported already and runs exactly what the console script runs (`gateway.cli.main`
with the arguments, environment and working directory given) with its own stdin, stdout and stderr, its exit code
taken from `main`'s return or `SystemExit` as the interpreter would. A case the fork cannot reproduce (a traceback
printed by the interpreter itself) still shows: an uncaught exception is printed as the interpreter prints it and
exits 1. tests/e2e/test_cli.py and the other CLI tests keep running the real console script.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path


def _child(argv: Sequence[str], env: Mapping[str, str], cwd: Path, out_fd: int, err_fd: int) -> None:
    code = 1
    try:
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = [str(Path(sys.executable).parent / "mcp-gateway"), *argv]
        import structlog

        # the test process's logging configuration points at pytest's capture: start from structlog's defaults,
        # as a new interpreter does (a command that configures logging does so itself)
        structlog.reset_defaults()
        from gateway.cli import main

        try:
            result = main(list(argv))
            code = int(result or 0)
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # the child is going away whatever happens
                stream.flush()
        os._exit(code)


def run(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        os.close(out_r)
        os.close(err_r)
        _child(argv, env, cwd, out_w, err_w)
    os.close(out_w)
    os.close(err_w)
    # read both pipes to the end in threads: a child filling one pipe must not block on it while we read the other
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}

    def drain(fd: int) -> None:
        with os.fdopen(fd, "rb") as fh:
            chunks[fd].append(fh.read())

    readers = [threading.Thread(target=drain, args=(fd,), daemon=True) for fd in (out_r, err_r)]
    for t in readers:
        t.start()
    for t in readers:
        t.join(timeout)
    if any(t.is_alive() for t in readers):
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise subprocess.TimeoutExpired(["mcp-gateway", *argv], timeout)
    _, status = os.waitpid(pid, 0)
    out = b"".join(chunks[out_r]).decode()
    err = b"".join(chunks[err_r]).decode()
    return subprocess.CompletedProcess(["mcp-gateway", *argv], os.waitstatus_to_exitcode(status), out, err)
