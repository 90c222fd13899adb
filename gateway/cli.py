"""mcp-gateway: run | check | (subsystems add keys, audit, db, explain ...)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

# modules with `register(subparsers)` adding their own subcommands
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "gateway.auth.cli",
    "gateway.audit.cli",
    "gateway.db.cli",
    "gateway.explain",
    "gateway.policy.schema",
)


def _cmd_check(args: argparse.Namespace) -> int:
    from gateway.policy.loader import PolicyError, load_policy

    if args.directory is not None:
        directory = Path(args.directory)
    else:
        from gateway.settings import SettingsError, load_settings

        try:
            settings = load_settings(args.config if Path(args.config).exists() else None)
        except SettingsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        directory = settings.path(settings.policies_dir)
    try:
        snap = load_policy(directory)
    except PolicyError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{directory}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    print(
        f"{directory}: ok (version {snap.version}, {len(snap.servers)} servers, {len(snap.tenants)} tenants, "
        f"{len(snap.keys)} keys)"
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway.server import run
    from gateway.settings import SettingsError, load_settings

    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    overrides: dict[str, object] = {}
    if args.port is not None:
        overrides["port"] = args.port
    if args.host is not None:
        overrides["host"] = args.host
    if overrides:
        settings = settings.model_copy(update={"listen": settings.listen.model_copy(update=overrides)})
    from gateway.policy.loader import PolicyError

    try:
        return run(settings)
    except PolicyError as exc:
        # the first load has no last good snapshot to fall back on: say exactly what to fix, not a traceback
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print("error: the gateway did not start; `mcp-gateway check` validates the policies", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-gateway", description="MCP gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="start the gateway")
    p_run.add_argument("--config", "-c", default="config.yaml")
    p_run.add_argument("--port", type=int, default=None, help="override listen.port")
    p_run.add_argument("--host", default=None, help="override listen.host")
    p_run.set_defaults(func=_cmd_run)
    p_check = sub.add_parser("check", help="validate a policy directory offline (exit 0 = valid)")
    p_check.add_argument("directory", nargs="?", default=None, help="policy directory (default: from config)")
    p_check.add_argument("--config", "-c", default="config.yaml")
    p_check.set_defaults(func=_cmd_check)
    for path in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if exc.name == path:
                continue  # subsystem not built yet
            raise
        register: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None] = module.register
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
