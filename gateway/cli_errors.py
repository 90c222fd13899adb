"""How every `mcp-gateway` command fails: one line on stderr naming what to fix, and an exit code per class of
error (the table is in docs/operations.md, "Exit codes"). A command raises `CliError` with the class; `run_command`
turns that, and the failures commands do not expect (a backend that cannot be reached, a file that cannot be read,
a bug), into that line and that code instead of a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import socket
import sys
import traceback
from collections.abc import Callable
from enum import IntEnum
from typing import Any, NoReturn

from gateway.settings import SettingsError


class ExitCode(IntEnum):
    OK = 0
    # the command ran and its answer is "no": policy invalid (check, run), refused (explain), chain broken (audit
    # verify), migrations pending (db status), schemas stale (schema --check)
    NEGATIVE = 1
    # wrong or missing arguments and option values, an invalid config.yaml or MGW_* variable, a failed start-up
    # check (the preflight's exit 2): the command line or the configuration must change
    USAGE = 2
    # the input is well-formed but conflicts with the data: unknown tenant or role, a key id that exists (create)
    # or does not (revoke), an edit the policy directory would not validate with
    REFUSED = 3
    # PostgreSQL cannot be reached (refused, timed out, name unknown, no such database, authentication failed)
    UNREACHABLE = 4
    # the backend answered but the operation failed: schema not migrated, permission denied, a migration failed
    BACKEND = 5
    # a file or directory cannot be read or written (permissions, missing, not a directory)
    FILE = 6
    # a bug in the gateway: the line names the exception; `--traceback` shows where
    INTERNAL = 70
    # interrupted (Ctrl-C), the shell's convention
    INTERRUPTED = 130


class CliError(Exception):
    """A failure the operator can fix: `message` says what and how, `code` is its class."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line usage error (argparse prints the whole usage block first): the line names the
    command, the problem and where the help is. Subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _one_line(text: str) -> str:
    return " ".join(text.split())


# connection-level failures: nothing was asked of the backend yet
_UNREACHABLE: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, socket.gaierror)
_PG_UNREACHABLE = (
    "InvalidAuthorizationSpecificationError",
    "InvalidPasswordError",
    "InvalidCatalogNameError",  # the database named in the DSN does not exist
    "CannotConnectNowError",
    "TooManyConnectionsError",
)
_NETWORK_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT})


def _pg_kind(exc: BaseException) -> str | None:
    """`unreachable`, `schema`, `error` for an asyncpg exception, None for anything else. asyncpg is looked up,
    not imported: a command that never loaded it cannot have raised one of its exceptions."""
    asyncpg: Any = sys.modules.get("asyncpg")
    if asyncpg is None or not isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return None
    if any(isinstance(exc, getattr(asyncpg, name)) for name in _PG_UNREACHABLE):
        return "unreachable"
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedFunctionError):
        return "schema"
    return "error"


def classify(exc: BaseException) -> tuple[str, ExitCode]:
    """The one line and the exit code for an exception a command did not handle itself."""
    if isinstance(exc, CliError):
        return exc.message, exc.code
    if isinstance(exc, SettingsError):
        # one line per invalid setting: each names the file or variable, the setting and the reason
        return str(exc), ExitCode.USAGE
    pg = _pg_kind(exc)
    if pg == "schema":
        return (
            f"PostgreSQL: {_one_line(str(exc))}; apply the schema first: `mcp-gateway db migrate`",
            ExitCode.BACKEND,
        )
    if (
        pg == "unreachable"
        or isinstance(exc, _UNREACHABLE)
        or (isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS)
    ):
        detail = _one_line(str(exc)) or type(exc).__name__
        return f"cannot reach PostgreSQL: {detail}; check the DSN and that the server is up", ExitCode.UNREACHABLE
    if pg == "error":
        return f"PostgreSQL: {_one_line(str(exc))}", ExitCode.BACKEND
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return f"{where}{exc.strerror or exc}", ExitCode.FILE
    return (
        f"internal error: {type(exc).__name__}: {_one_line(str(exc))} (a bug: rerun with --traceback and report it)",
        ExitCode.INTERNAL,
    )


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand; every failure becomes `error: ...` lines on stderr and its exit code."""
    try:
        return func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except SystemExit:
        raise
    except Exception as exc:
        if getattr(args, "traceback", False):
            traceback.print_exc()
        message, code = classify(exc)
        for line in message.splitlines() or [message]:
            print(f"error: {line}", file=sys.stderr)
        return code


def deferred(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command function imported when the command runs, so `--help` and the other commands do not load what
    only this one needs (PostgreSQL driver, admin models, the YAML round trip)."""

    def command(args: argparse.Namespace) -> int:
        func: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), name)
        return func(args)

    return command
