"""mcp-gateway: run | check | (subsystems add keys, audit, db, explain ...)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.audit.cli import register as register_audit
from gateway.auth.cli import register as register_keys
from gateway.cli_errors import OneLineParser, run_command
from gateway.db.cli import register as register_db
from gateway.envcheck import log_unknown_env, print_unknown_env
from gateway.explain import register as register_explain
from gateway.policy.schema import register as register_schema
from gateway.version import VERSION

if TYPE_CHECKING:
    from gateway.settings import Settings

# the subsystems' own subcommands (`keys`, `audit`, `db`, `explain`, `schema`), each added by its `register`
SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    register_keys,
    register_audit,
    register_db,
    register_explain,
    register_schema,
)


def _cmd_check(args: argparse.Namespace) -> int:
    from gateway.policy.loader import PolicyError, load_policy, no_servers_problem

    settings = None
    if args.directory is not None:
        directory = Path(args.directory)
    else:
        from gateway.settings import SettingsError, load_settings

        try:
            settings = load_settings(args.config if Path(args.config).exists() else None)
        except SettingsError as exc:
            for line in str(exc).splitlines():
                print(f"error: {line}", file=sys.stderr)
            return 2
        directory = settings.path(settings.policies_dir)
    try:
        snap = load_policy(directory)
        print_unknown_env(snap.policy, settings)
        emptied = no_servers_problem(snap)
        if emptied is not None:
            raise PolicyError([emptied])
    except PolicyError as exc:
        print_unknown_env(settings)
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{directory}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    print(
        f"{directory}: ok (version {snap.version}, {len(snap.servers)} servers, {len(snap.tenants)} tenants, "
        f"{len(snap.keys)} keys)"
    )
    return 0


def _serve(settings: Settings) -> int:
    """One process serving, or the worker supervisor (gateway/net/workers.py), whose workers each call `server.run`."""
    from gateway.logging import configure_logging
    from gateway.server import run

    if settings.workers > 1:
        import structlog

        from gateway.net.workers import is_worker, supervise

        configure_logging(settings.logging.level, settings.logging.format)
        if not settings.redis.url:
            # sessions, limits and breakers would live in each worker's memory: a session started on one worker
            # would be unknown to the next and every limit would be multiplied by N; refuse rather than misbehave
            structlog.get_logger("gateway.server").error(
                "workers > 1 needs redis.url (MGW_REDIS_URL): workers share sessions and limits through Redis"
            )
            return 2
        if not is_worker():
            return supervise(settings)
    return run(settings)


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway.settings import SettingsError, load_settings

    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    overrides: dict[str, object] = {}
    if args.port is not None:
        overrides["port"] = args.port
    if args.host is not None:
        overrides["host"] = args.host
    if overrides:
        settings = settings.model_copy(update={"listen": settings.listen.model_copy(update=overrides)})
    from gateway.preflight import problems

    found = problems(settings)
    if found:
        for line in found:
            print(f"error: {line}", file=sys.stderr)
        print("error: the gateway did not start", file=sys.stderr)
        return 2
    log_unknown_env(settings)
    from gateway.policy.loader import PolicyError

    try:
        return _serve(settings)
    except PolicyError as exc:
        # the first load has no last good snapshot to fall back on: say exactly what to fix, not a traceback
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print("error: the gateway did not start; `mcp-gateway check` validates the policies", file=sys.stderr)
        return 1


def _port(text: str) -> int:
    """argparse type of --port: a one-line usage error instead of a port the preflight cannot even try."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535)")
    return port


def gateway_version() -> str:
    return VERSION


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = OneLineParser(
        prog="mcp-gateway",
        description="MCP gateway. Exit codes: docs/operations.md (0 ok, 1 no/invalid policy, 2 usage or config, "
        "3 refused input, 4 backend unreachable, 5 backend error, 6 file error, 70 internal error).",
    )
    parser.add_argument("--version", action="version", version=f"mcp-gateway {gateway_version()}")
    parser.add_argument("--traceback", action="store_true", help="show the traceback of an internal error")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="start the gateway")
    p_run.add_argument("--config", "-c", default="config.yaml")
    p_run.add_argument("--port", type=_port, default=None, help="override listen.port")
    p_run.add_argument("--host", default=None, help="override listen.host")
    p_run.set_defaults(func=_cmd_run)
    p_check = sub.add_parser("check", help="validate a policy directory offline (exit 0 = valid)")
    p_check.add_argument("directory", nargs="?", default=None, help="policy directory (default: from config)")
    p_check.add_argument("--config", "-c", default="config.yaml")
    p_check.set_defaults(func=_cmd_check)
    for register in SUBCOMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return run_command(func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
