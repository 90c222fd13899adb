"""JSON Schema of each policy file, generated from the pydantic models (the models are the source of truth).

The schemas in `policies/schema/` let editors validate and complete `policies/*.yaml` as ops type. A unit test
regenerates them and fails when a model changed without regenerating. Regenerate with

    mcp-gateway schema --write policies/schema        (or: python -m gateway.policy.schema policies/schema)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from gateway.policy.model import POLICY_FILES
from gateway.policy.reference import render_reference

SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID_BASE = "https://mcp-gateway.dev/schema/"


def schema_file_name(policy_file: str) -> str:
    """`servers.yaml` -> `servers.schema.json`."""
    return policy_file.rsplit(".", 1)[0] + ".schema.json"


def policy_schemas() -> dict[str, dict[str, Any]]:
    """Schema file name -> JSON Schema, one per policy file, in the order of POLICY_FILES."""
    out: dict[str, dict[str, Any]] = {}
    for policy_file, model in POLICY_FILES.items():
        # validation mode: the schema describes what the loader accepts (aliases such as `global`, defaults)
        body = model.model_json_schema(mode="validation", by_alias=True)
        name = schema_file_name(policy_file)
        schema: dict[str, Any] = {"$schema": SCHEMA_DRAFT, "$id": SCHEMA_ID_BASE + name}
        schema.update(body)
        schema["title"] = f"MCP gateway policy: {policy_file}"
        out[name] = schema
    return out


def render(schema: dict[str, Any]) -> bytes:
    # sorted keys and a trailing newline: byte-stable output, so the freshness test compares bytes
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, schema in policy_schemas().items():
        path = directory / name
        path.write_bytes(render(schema))
        written.append(path)
    return written


def stale_schemas(directory: Path) -> list[str]:
    """Names of the schema files in `directory` that are missing or differ from the models."""
    stale: list[str] = []
    for name, schema in policy_schemas().items():
        path = directory / name
        try:
            current = path.read_bytes()
        except OSError:
            stale.append(name)
            continue
        if current != render(schema):
            stale.append(name)
    return stale


def _cmd_schema(args: argparse.Namespace) -> int:
    if args.reference is not None:
        Path(args.reference).write_text(render_reference(policy_schemas()))
        print(args.reference)
        return 0
    if args.write is not None:
        for path in write_schemas(Path(args.write)):
            print(path)
        return 0
    if args.check is not None:
        stale = stale_schemas(Path(args.check))
        for name in stale:
            print(f"stale: {Path(args.check) / name}", file=sys.stderr)
        return 1 if stale else 0
    schemas = policy_schemas()
    print(render(schemas[schema_file_name(args.file)]).decode(), end="")
    return 0


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="DIR", help="write one <file>.schema.json per policy file into DIR")
    group.add_argument("--check", metavar="DIR", help="exit 1 if the schemas in DIR are missing or out of date")
    group.add_argument(
        "--reference", metavar="FILE", help="write the Markdown policy reference (docs/policy-reference.md)"
    )
    parser.add_argument(
        "--file", default="servers.yaml", choices=list(POLICY_FILES), help="print the schema of this policy file"
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("schema", help="print or write the JSON Schema of the policy files")
    _add_arguments(p)
    p.set_defaults(func=_cmd_schema)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.policy.schema", description=__doc__)
    parser.add_argument("directory", nargs="?", default="policies/schema")
    args = parser.parse_args(argv)
    for path in write_schemas(Path(args.directory)):
        print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
