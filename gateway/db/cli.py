"""`mcp-gateway db migrate | status | retention`: schema migrations and audit partition maintenance."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.cli_errors import CliError, ExitCode


def config_dsn(args: argparse.Namespace) -> str | None:
    """--dsn, else MGW_POSTGRES_DSN, else `postgres.dsn` of the config file (if it exists)."""
    dsn: str | None = args.dsn or os.environ.get("MGW_POSTGRES_DSN")
    config = getattr(args, "config", None)
    if not dsn and config and Path(config).exists():
        from gateway.settings import load_settings

        dsn = load_settings(config).postgres.dsn  # SettingsError: the caller's one line per problem, exit 2
    return dsn


def _dsn(args: argparse.Namespace) -> str:
    dsn = config_dsn(args)
    if not dsn:
        raise CliError("give --dsn, set MGW_POSTGRES_DSN, or set postgres.dsn in --config", ExitCode.USAGE)
    return dsn


def _cmd_migrate(args: argparse.Namespace) -> int:
    from gateway.db.migrate import MigrationError, migrate

    dsn = _dsn(args)
    try:
        result = asyncio.run(migrate(dsn, target=args.target))
    except MigrationError as exc:
        raise CliError(str(exc), ExitCode.BACKEND) from None
    for mig in result.applied:
        print(f"applied {mig.name}")
    for name in result.changed:
        print(f"warning: {name} changed after it was applied (migrations are append-only)", file=sys.stderr)
    print(f"{len(result.applied)} applied, {len(result.already)} already applied")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from gateway.db.migrate import applied_versions, discover

    dsn = _dsn(args)
    done = set(asyncio.run(applied_versions(dsn)))
    pending = 0
    for mig in discover():
        state = "applied" if mig.version in done else "pending"
        pending += state == "pending"
        print(f"{state:8} {mig.name}")
    return 1 if pending else 0


async def _retention(dsn: str, days: int, ahead: int) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        today = datetime.now(UTC).date()
        await conn.execute("SELECT audit_ensure_partitions($1::date, $2::date)", today, today + timedelta(days=ahead))
        rows = await conn.fetch("SELECT audit_drop_partitions_before($1::date) AS name", today - timedelta(days=days))
        return [r["name"] for r in rows]
    finally:
        await conn.close()


def _cmd_retention(args: argparse.Namespace) -> int:
    dsn = _dsn(args)
    dropped = asyncio.run(_retention(dsn, args.days, args.ahead))
    for name in dropped:
        print(f"dropped {name}")
    print(f"{len(dropped)} partition(s) dropped (older than {args.days} days)")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p_db = sub.add_parser("db", help="PostgreSQL schema and maintenance")
    db_sub = p_db.add_subparsers(dest="db_command", required=True)
    p_mig = db_sub.add_parser("migrate", help="apply pending numbered SQL migrations")
    p_mig.add_argument("--dsn", help="owner DSN (default: MGW_POSTGRES_DSN)")
    p_mig.add_argument("--target", type=int, default=None, help="stop after this version")
    p_mig.add_argument("--config", "-c", default="config.yaml", help="read postgres.dsn from here if no --dsn")
    p_mig.set_defaults(func=_cmd_migrate)
    p_status = db_sub.add_parser("status", help="list migrations and whether they are applied (exit 1 if pending)")
    p_status.add_argument("--dsn")
    p_status.add_argument("--config", "-c", default="config.yaml")
    p_status.set_defaults(func=_cmd_status)
    p_ret = db_sub.add_parser("retention", help="create audit partitions ahead and drop those past retention")
    p_ret.add_argument("--dsn")
    p_ret.add_argument("--config", "-c", default="config.yaml")
    p_ret.add_argument("--days", type=int, default=30, help="keep this many days (default 30)")
    p_ret.add_argument("--ahead", type=int, default=3, help="create partitions this many days ahead (default 3)")
    p_ret.set_defaults(func=_cmd_retention)
