"""`mcp-gateway keys create | list | revoke`: manage API keys in keys.yaml (`--policies DIR`) or PostgreSQL
(`--dsn DSN`). `create` prints the new key once; only its HMAC is stored anywhere.

keys.yaml is edited as text (the entry is appended, `revoked: true` inserted) so its comments survive, then the
whole policy directory is validated; a result that does not validate is rolled back.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from gateway.auth.apikeys import generate_key, hash_key

_DURATION = re.compile(r"^(\d+)([hdw])$")
_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}


def parse_expiry(text: str | None) -> datetime | None:
    """`30d`, `12h`, `2w` from now, or an ISO 8601 time (naive = UTC)."""
    if text is None:
        return None
    m = _DURATION.match(text)
    if m:
        return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _secret(config: str) -> bytes:
    from gateway.settings import load_settings

    settings = load_settings(config if Path(config).exists() else None)
    return settings.api_keys.hmac_secret.resolve(Path(settings.base_dir)).encode()


def _dsn(args: argparse.Namespace) -> str | None:
    return str(args.dsn) if args.dsn else None


# ------------------------------------------------------------------------------------------ keys.yaml editing


def _yaml_entry(entry: dict[str, Any], indent: str) -> str:
    body = yaml.safe_dump([entry], sort_keys=False, default_flow_style=None, width=1000)
    return "".join(indent + line + "\n" for line in body.splitlines())


def _write_validated(path: Path, text: str) -> None:
    """Replace keys.yaml with `text` if the policy directory still validates; otherwise leave it untouched."""
    from gateway.policy.loader import PolicyError, load_policy

    original = path.read_text() if path.exists() else None
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    try:
        load_policy(path.parent)
    except PolicyError as exc:
        if original is None:
            path.unlink()
        else:
            tmp.write_text(original)
            tmp.replace(path)
        raise SystemExit("error: the change would not validate, keys.yaml left as it was:\n" + str(exc)) from None


def append_policy_key(path: Path, entry: dict[str, Any]) -> None:
    text = path.read_text() if path.exists() else ""
    data = yaml.safe_load(text) if text.strip() else None
    keys = (data or {}).get("keys") if isinstance(data, dict) else None
    if any(isinstance(k, dict) and k.get("id") == entry["id"] for k in keys or []):
        raise SystemExit(f"error: key id {entry['id']!r} already exists in {path}")
    m = re.search(r"^(\s*)- id:", text, re.MULTILINE)
    if m is not None and keys:
        new = text if text.endswith("\n") else text + "\n"
        new += _yaml_entry(entry, m.group(1))
    else:  # no block list to extend (new file, `keys: []`): keep the comments, restate the list
        kept = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
        new = kept + yaml.safe_dump({"keys": [*(keys or []), entry]}, sort_keys=False, width=1000)
    _write_validated(path, new)


def revoke_policy_key(path: Path, key_id: str) -> None:
    text = path.read_text()
    lines = text.splitlines()
    pattern = re.compile(r"^(\s*)- id:\s*['\"]?" + re.escape(key_id) + r"['\"]?\s*(#.*)?$")
    for i, line in enumerate(lines):
        m = pattern.match(line)
        if m is None:
            continue
        indent = m.group(1) + "  "
        end = i + 1
        while end < len(lines) and (lines[end].startswith(indent) or not lines[end].strip()):
            end += 1
        block = range(i + 1, end)
        for j in block:
            if re.match(rf"^{indent}revoked\s*:", lines[j]):
                lines[j] = f"{indent}revoked: true"
                break
        else:
            lines.insert(i + 1, f"{indent}revoked: true")
        _write_validated(path, "\n".join(lines) + "\n")
        return
    raise SystemExit(f"error: no key {key_id!r} in {path}")


# ------------------------------------------------------------------------------------------ commands


def _cmd_create(args: argparse.Namespace) -> int:
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    expires = parse_expiry(args.expires)
    secret = _secret(args.config)
    key_id, raw = generate_key(args.id)
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
    dsn = _dsn(args)
    if dsn is not None:
        from gateway.auth.pgkeys import KeyExists, NewKey

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
            print(f"error: key id {key_id!r} already exists", file=sys.stderr)
            return 1
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


async def _pg(dsn: str, action: Any) -> Any:
    import asyncpg

    from gateway.auth.pgkeys import KeyRepository

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await action(KeyRepository(conn))
    finally:
        await conn.close()


def _cmd_list(args: argparse.Namespace) -> int:
    rows: list[tuple[str, ...]] = []
    if args.policies:
        data = yaml.safe_load((Path(args.policies) / "keys.yaml").read_text()) or {}
        for k in data.get("keys") or []:
            if args.tenant and k.get("tenant") != args.tenant:
                continue
            state = "revoked" if k.get("revoked") else "active"
            exp = k.get("expires_at")
            rows.append(
                (
                    "policy",
                    str(k.get("id")),
                    str(k.get("tenant")),
                    ",".join(k.get("scopes") or ["read"]),
                    state,
                    str(exp or "-"),
                )
            )
    dsn = _dsn(args)
    if dsn is not None:
        for r in asyncio.run(_pg(dsn, lambda repo: repo.list(args.tenant))):
            state = "revoked" if r["revoked_at"] is not None else "active"
            exp = r["expires_at"].isoformat() if r["expires_at"] is not None else "-"
            rows.append(("postgres", r["id"], r["tenant"], ",".join(r["scopes"]), state, exp))
    if not args.policies and dsn is None:
        print("error: give --policies DIR and/or --dsn DSN", file=sys.stderr)
        return 2
    print("source\tid\ttenant\tscopes\tstate\texpires")
    for row in rows:
        print("\t".join(row))
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    dsn = _dsn(args)
    if dsn is not None:
        found = asyncio.run(_pg(dsn, lambda repo: repo.revoke(args.key_id)))
        if not found:
            print(f"error: no key {args.key_id!r} in PostgreSQL", file=sys.stderr)
            return 1
    elif args.policies:
        revoke_policy_key(Path(args.policies) / "keys.yaml", args.key_id)
    else:
        print("error: give --policies DIR or --dsn DSN", file=sys.stderr)
        return 2
    print(f"revoked: {args.key_id}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p_keys = sub.add_parser("keys", help="API keys: create (prints the key once), list, revoke")
    keys_sub = p_keys.add_subparsers(dest="keys_command", required=True)

    def target(p: argparse.ArgumentParser) -> None:
        p.add_argument("--policies", help="policy directory whose keys.yaml to edit/read")
        p.add_argument("--dsn", help="PostgreSQL DSN of the key store (table mgw_api_keys, `mcp-gateway db migrate`)")
        p.add_argument("--config", "-c", default="config.yaml", help="config file (for the HMAC secret)")

    p_create = keys_sub.add_parser("create", help="create a key and print it once")
    p_create.add_argument("--tenant", required=True)
    p_create.add_argument("--id", default=None, help="key id (letters and digits; default random)")
    p_create.add_argument("--scopes", default="read", help="comma-separated: read,write,admin (default read)")
    p_create.add_argument("--role", default="user", help="rate-limit tier / access role (default user)")
    p_create.add_argument("--allow-ip", action="append", default=[], help="allowed client CIDR (repeatable)")
    p_create.add_argument("--expires", default=None, help="ISO 8601 time, or 30d / 12h / 2w from now")
    p_create.add_argument("--tool-allow", action="append", default=[], help="tool pattern the key may call")
    p_create.add_argument("--tool-deny", action="append", default=[], help="tool pattern the key may not call")
    p_create.add_argument("--description", default="")
    target(p_create)
    p_create.set_defaults(func=_cmd_create)

    p_list = keys_sub.add_parser("list", help="list keys (never their hashes)")
    p_list.add_argument("--tenant", default=None)
    target(p_list)
    p_list.set_defaults(func=_cmd_list)

    p_revoke = keys_sub.add_parser("revoke", help="revoke a key")
    p_revoke.add_argument("key_id")
    target(p_revoke)
    p_revoke.set_defaults(func=_cmd_revoke)
