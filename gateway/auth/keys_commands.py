"""The `mcp-gateway keys` commands (gateway/auth/cli.py parses their arguments): imported only when one runs,
so `mcp-gateway --help` and the other commands do not load PostgreSQL, the admin models and the YAML round trip."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import yaml
from pydantic import ValidationError

from gateway.admin.grant import known_roles
from gateway.admin.keys import CreateKeyRequest
from gateway.auth.apikeys import generate_key, hash_key
from gateway.auth.keysfile import append_policy_key, revoke_policy_key
from gateway.auth.pgkeys import KeyExists, KeyRepository, NewKey
from gateway.cli_errors import CliError, ExitCode
from gateway.policy.loader import PolicyError, load_policy
from gateway.policy.snapshot import Snapshot
from gateway.settings import Settings, load_settings

T = TypeVar("T")


def _settings(args: argparse.Namespace) -> Settings:
    config = Path(args.config)
    return load_settings(config if config.exists() else None)


def _secret(settings: Settings) -> bytes:
    ref = settings.api_keys.hmac_secret
    try:
        return ref.resolve(Path(settings.base_dir)).encode()
    except LookupError as exc:
        where = f"`export {ref.env}=...`" if ref.env else f"the file {ref.file}"
        raise CliError(
            f"api_keys.hmac_secret: {exc}; the key hash needs the gateway's secret: provide {where}, or point "
            "--config at the config.yaml that names it",
            ExitCode.USAGE,
        ) from None


def _dsn(args: argparse.Namespace, settings: Settings | None) -> str | None:
    """--dsn; without --dsn and --policies: MGW_POSTGRES_DSN, else postgres.dsn of the config."""
    if args.dsn:
        return str(args.dsn)
    if args.policies:
        return None  # keys.yaml was asked for: a DSN in the environment must not redirect the write
    env = os.environ.get("MGW_POSTGRES_DSN")
    if env:
        return env
    return settings.postgres.dsn if settings is not None else None


def _policy(directory: Path) -> Snapshot:
    if not directory.is_dir():
        raise CliError(
            f"{directory}: no such policy directory; give --policies DIR or set policies_dir in --config",
            ExitCode.FILE,
        )
    try:
        return load_policy(directory)
    except PolicyError as exc:
        raise CliError(
            f"{directory} does not validate ({exc.problems[0]}); fix it first: `mcp-gateway check {directory}`",
            ExitCode.NEGATIVE,
        ) from None


_FLAGS = {"id": "--id", "tenant": "--tenant", "scopes": "--scopes", "role": "--role", "allow_ips": "--allow-ip"}
_FLAGS |= {"tools_allow": "--tool-allow", "tools_deny": "--tool-deny", "description": "--description"}


def _validated(args: argparse.Namespace, scopes: list[str]) -> CreateKeyRequest:
    """The fields checked exactly as the admin API checks a new key; a problem names the flag."""
    try:
        return CreateKeyRequest.model_validate(
            {
                "id": args.id,
                "tenant": args.tenant,
                "scopes": scopes,
                "role": args.role,
                "allow_ips": list(args.allow_ip),
                "description": args.description,
                "tools_allow": list(args.tool_allow),
                "tools_deny": list(args.tool_deny),
            }
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = _FLAGS.get(str(err["loc"][0]), str(err["loc"][0])) if err["loc"] else "input"
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise CliError(f"{flag}: {msg}", ExitCode.USAGE) from None


def _check_against_policy(snapshot: Snapshot, tenant: str, role: str | None, key_id: str | None) -> None:
    """`role` None: not checked (keys.yaml may name a new role; the admin API and PostgreSQL keys may not)."""
    where = snapshot.source_dir
    if tenant not in snapshot.tenants:
        known = ", ".join(sorted(snapshot.tenants)) or "none"
        raise CliError(
            f"unknown tenant {tenant!r}: the policy in {where} defines {known}; add it to tenants.yaml first",
            ExitCode.REFUSED,
        )
    if role is not None and role not in known_roles(snapshot):
        raise CliError(
            f"unknown role {role!r}: use user, operator or a role the policy in {where} names", ExitCode.REFUSED
        )
    if key_id is not None and key_id in snapshot.keys:
        raise CliError(f"key id {key_id!r} is taken by {where}/keys.yaml; choose another --id", ExitCode.REFUSED)


async def _pg(dsn: str, action: Callable[[KeyRepository], Awaitable[T]]) -> T:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await action(KeyRepository(conn))
    finally:
        await conn.close()


def _yaml_entry(entry: dict[str, Any], indent: str) -> str:
    body = yaml.safe_dump([entry], sort_keys=False, default_flow_style=None, width=1000)
    return "".join(indent + line + "\n" for line in body.splitlines())


# ------------------------------------------------------------------------------------------ commands


def cmd_create(args: argparse.Namespace) -> int:
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    body = _validated(args, scopes)
    settings = _settings(args)
    dsn = _dsn(args, settings)
    if dsn is not None or args.policies:
        directory = Path(args.policies) if args.policies else settings.path(settings.policies_dir)
        _check_against_policy(_policy(directory), args.tenant, args.role if dsn else None, args.id)
    secret = _secret(settings)
    expires: datetime | None = args.expires
    key_id, raw = generate_key(body.id)
    digest = hash_key(secret, raw)
    entry: dict[str, Any] = {"id": key_id, "hash": digest, "tenant": args.tenant, "scopes": scopes}
    if args.role != "user":
        entry["role"] = args.role
    if args.allow_ip:
        entry["allow_ips"] = list(args.allow_ip)
    if expires is not None:
        entry["expires_at"] = expires.isoformat().replace("+00:00", "Z")
    if args.tool_allow or args.tool_deny:
        entry["tools"] = {k: v for k, v in (("allow", args.tool_allow), ("deny", args.tool_deny)) if v}
    if args.description:
        entry["description"] = args.description
    if dsn is not None:
        new = NewKey(
            id=key_id,
            hash=digest,
            tenant=args.tenant,
            scopes=scopes,
            role=args.role,
            allow_ips=args.allow_ip or (),
            tools_allow=args.tool_allow or (),
            tools_deny=args.tool_deny or (),
            description=args.description or "",
            expires_at=expires,
        )
        try:
            asyncio.run(_pg(dsn, lambda repo: repo.create(new)))
        except KeyExists:
            raise CliError(
                f"key id {key_id!r} already exists in PostgreSQL; choose another --id", ExitCode.REFUSED
            ) from None
        where = "PostgreSQL (mgw_api_keys)"
    elif args.policies:
        append_policy_key(Path(args.policies) / "keys.yaml", entry)
        where = str(Path(args.policies) / "keys.yaml")
    else:
        where = ""
    print(f"key: {raw}")
    print(f"id: {key_id}")
    print("# the key is shown only now; store it, the gateway keeps only its hash", file=sys.stderr)
    if where:
        print(f"# stored in {where}", file=sys.stderr)
    else:
        print("# add this entry to keys.yaml:", file=sys.stderr)
        print(_yaml_entry(entry, "  "), end="")
    return 0


def _policy_rows(directory: Path, tenant: str | None) -> list[tuple[str, ...]]:
    if not directory.is_dir():
        raise CliError(f"{directory}: no such policy directory", ExitCode.FILE)
    path = directory / "keys.yaml"
    if not path.exists():
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise CliError(f"{path}: invalid YAML ({' '.join(str(exc).split())})", ExitCode.NEGATIVE) from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list):
        keys = []
    rows: list[tuple[str, ...]] = []
    for k in keys:
        if not isinstance(k, dict) or (tenant and k.get("tenant") != tenant):
            continue
        state = "revoked" if k.get("revoked") else "active"
        scopes = k.get("scopes") or ["read"]
        rows.append(
            (
                "policy",
                str(k.get("id")),
                str(k.get("tenant")),
                ",".join(str(s) for s in scopes) if isinstance(scopes, list) else str(scopes),
                state,
                str(k.get("expires_at") or "-"),
            )
        )
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    settings = None if args.dsn or args.policies else _settings(args)
    dsn = _dsn(args, settings)
    if not args.policies and dsn is None:
        raise CliError(
            "say where the keys are: --policies DIR and/or --dsn DSN (or set MGW_POSTGRES_DSN, or postgres.dsn "
            "in --config)",
            ExitCode.USAGE,
        )
    rows: list[tuple[str, ...]] = []
    if args.policies:
        rows.extend(_policy_rows(Path(args.policies), args.tenant))
    if dsn is not None:
        for r in asyncio.run(_pg(dsn, lambda repo: repo.list(args.tenant))):
            state = "revoked" if r["revoked_at"] is not None else "active"
            exp = r["expires_at"].isoformat() if r["expires_at"] is not None else "-"
            rows.append(("postgres", r["id"], r["tenant"], ",".join(r["scopes"]), state, exp))
    print("source\tid\ttenant\tscopes\tstate\texpires")
    for row in rows:
        print("\t".join(row))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    settings = None if args.dsn or args.policies else _settings(args)
    dsn = _dsn(args, settings)
    if dsn is not None:
        found = asyncio.run(_pg(dsn, lambda repo: repo.revoke(args.key_id)))
        if not found:
            raise CliError(
                f"no key {args.key_id!r} in PostgreSQL; `mcp-gateway keys list --dsn ...` shows the ids",
                ExitCode.REFUSED,
            )
    elif args.policies:
        revoke_policy_key(Path(args.policies) / "keys.yaml", args.key_id)
    else:
        raise CliError(
            "say where the key is: --policies DIR or --dsn DSN (or set MGW_POSTGRES_DSN, or postgres.dsn in --config)",
            ExitCode.USAGE,
        )
    print(f"revoked: {args.key_id}")
    return 0
