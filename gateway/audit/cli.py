"""`mcp-gateway audit verify --file PATH | --dsn DSN`: check the hash chains; exit 1 on any problem."""

from __future__ import annotations

import argparse
import asyncio

from gateway.audit.hashchain import VerifyReport
from gateway.cli_errors import CliError, ExitCode


def _print(report: VerifyReport, source: str) -> int:
    for problem in report.problems:
        print(f"FAIL {problem}")
    status = "ok" if report.ok else f"{len(report.problems)} problem(s)"
    print(f"{source}: {report.records} record(s) from {report.writers} writer(s): {status}")
    return 0 if report.ok else 1


def _cmd_verify(args: argparse.Namespace) -> int:
    from gateway.audit.verify import verify_file, verify_postgres

    if args.file:
        # a file that cannot be read: one line and exit 6 (gateway/cli_errors.py)
        return _print(verify_file(args.file), args.file)
    from gateway.db.cli import config_dsn

    dsn = config_dsn(args)
    if not dsn:
        raise CliError("give --file or --dsn (or set MGW_POSTGRES_DSN, or postgres.dsn in --config)", ExitCode.USAGE)
    # unreachable (exit 4), missing table or permission denied (exit 5): classified by gateway/cli_errors.py
    return _print(asyncio.run(verify_postgres(dsn)), "postgresql")


def _cmd_bench(args: argparse.Namespace) -> int:
    import orjson

    from gateway.audit.throughput import measure_file, measure_postgres

    if args.dsn:
        result = asyncio.run(measure_postgres(args.dsn, args.records, batch_size=args.batch))
    else:
        result = asyncio.run(measure_file(args.records, batch_size=args.batch))
    print(orjson.dumps(result.as_dict()).decode())
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p_audit = sub.add_parser("audit", help="audit trail tools")
    audit_sub = p_audit.add_subparsers(dest="audit_command", required=True)
    p_verify = audit_sub.add_parser(
        "verify", help="check the tamper-evident hash chains (exit 0 = intact, 1 = altered, removed or reordered)"
    )
    src = p_verify.add_mutually_exclusive_group()
    src.add_argument("--file", help="a JSONL audit file (audit.sink: file)")
    src.add_argument("--dsn", help="PostgreSQL DSN of a role that reads every row (default: MGW_POSTGRES_DSN)")
    p_verify.add_argument("--config", "-c", default="config.yaml", help="read postgres.dsn from here if no --dsn")
    p_verify.set_defaults(func=_cmd_verify)
    p_bench = audit_sub.add_parser(
        "bench", help="audit throughput (rows/s) through the real pipeline; --dsn uses a temporary database"
    )
    p_bench.add_argument("--dsn", help="PostgreSQL server DSN with CREATEDB (default: a JSONL file in /tmp)")
    p_bench.add_argument("--records", type=int, default=50_000)
    p_bench.add_argument("--batch", type=int, default=500)
    p_bench.set_defaults(func=_cmd_bench)
