"""Audit throughput (rows/s) through the gateway's own helper, run by the bench in a subprocess.

`python -m tests.perf.audit_rate file --records N` calls `gateway.audit.throughput.measure_file` (what
`mcp-gateway audit bench` does without --dsn); `python -m tests.perf.audit_rate postgres --dsn DSN --records N`
calls `gateway.audit.throughput.measure` with a `PostgresSink` on DSN: a database the bench created and migrated
(and drops afterwards, whatever happens to this process). One JSON line on stdout.

The helper removes its temporary directories (the file sink's and the pipeline's spool) itself; the bench still
runs this with TMPDIR set to a directory it removes afterwards, so a killed run leaves nothing behind either.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.perf.audit_rate")
    p.add_argument("sink", choices=("file", "postgres"))
    p.add_argument("--dsn", help="an existing, migrated database (postgres)")
    p.add_argument("--records", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=500)
    args = p.parse_args(argv)

    from gateway.audit.throughput import measure, measure_file

    if args.sink == "file":
        result = asyncio.run(measure_file(args.records, batch_size=args.batch))
    else:
        if not args.dsn:
            p.error("postgres needs --dsn")
        from gateway.audit.postgres import PostgresSink

        result = asyncio.run(measure(PostgresSink(args.dsn), args.records, batch_size=args.batch))
    print(orjson.dumps(result.as_dict()).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
