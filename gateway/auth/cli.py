"""`mcp-gateway keys create | list | revoke`: manage API keys in keys.yaml (`--policies DIR`) or PostgreSQL
(`--dsn DSN`). `create` prints the new key once; only its HMAC is stored anywhere.

Where the keys are: `--dsn` selects PostgreSQL and `--policies` keys.yaml; with neither, the DSN comes from
MGW_POSTGRES_DSN, else `postgres.dsn` of `--config` (and `create` without any prints an entry to paste). keys.yaml
is edited through a YAML round trip that keeps its comments and style (gateway/auth/keysfile.py). A key is checked
like the admin API checks one (fields, known tenant and role, an id keys.yaml does not hold) against the policy
directory (`--policies`, else `policies_dir` of `--config`) before anything is stored. Every failure is one
`error:` line with the exit code of its class (gateway/cli_errors.py).
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta

from gateway.cli_errors import deferred

_DURATION = re.compile(r"^(\d+)([hdw])$")
_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}
_EXPIRY_HELP = "an ISO 8601 time (2030-01-31 or 2030-01-31T12:00:00Z) or a duration from now (12h, 30d, 2w)"


def parse_expiry(text: str | None) -> datetime | None:
    """`30d`, `12h`, `2w` from now, or an ISO 8601 time (naive = UTC). ValueError names the accepted forms."""
    if text is None:
        return None
    m = _DURATION.match(text.strip())
    if m:
        return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give {_EXPIRY_HELP}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _expiry_arg(text: str) -> datetime:
    """argparse type of --expires: a bad value is a one-line usage error naming the flag."""
    try:
        when = parse_expiry(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert when is not None
    if when <= datetime.now(UTC):
        raise argparse.ArgumentTypeError(f"{text!r} is in the past")
    return when


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p_keys = sub.add_parser("keys", help="API keys: create (prints the key once), list, revoke")
    keys_sub = p_keys.add_subparsers(dest="keys_command", required=True)

    def target(p: argparse.ArgumentParser) -> None:
        p.add_argument("--policies", help="policy directory whose keys.yaml to edit/read")
        p.add_argument(
            "--dsn",
            help="PostgreSQL DSN of the key store (table mgw_api_keys, `mcp-gateway db migrate`); without --dsn "
            "and --policies: MGW_POSTGRES_DSN, else postgres.dsn of --config",
        )
        p.add_argument(
            "--config", "-c", default="config.yaml", help="config file (HMAC secret, postgres.dsn, policies_dir)"
        )

    p_create = keys_sub.add_parser("create", help="create a key and print it once")
    p_create.add_argument("--tenant", required=True, help="a tenant of tenants.yaml")
    p_create.add_argument("--id", default=None, help="key id (letters and digits; default random)")
    p_create.add_argument("--scopes", default="read", help="comma-separated: read,write,admin (default read)")
    p_create.add_argument("--role", default="user", help="rate-limit tier / access role (default user)")
    p_create.add_argument("--allow-ip", action="append", default=[], help="allowed client CIDR (repeatable)")
    p_create.add_argument("--expires", type=_expiry_arg, default=None, help=_EXPIRY_HELP)
    p_create.add_argument("--tool-allow", action="append", default=[], help="tool pattern the key may call")
    p_create.add_argument("--tool-deny", action="append", default=[], help="tool pattern the key may not call")
    p_create.add_argument("--description", default="")
    target(p_create)
    p_create.set_defaults(func=deferred("gateway.auth.keys_commands", "cmd_create"))

    p_list = keys_sub.add_parser("list", help="list keys (never their hashes)")
    p_list.add_argument("--tenant", default=None)
    target(p_list)
    p_list.set_defaults(func=deferred("gateway.auth.keys_commands", "cmd_list"))

    p_revoke = keys_sub.add_parser("revoke", help="revoke a key")
    p_revoke.add_argument("key_id")
    target(p_revoke)
    p_revoke.set_defaults(func=deferred("gateway.auth.keys_commands", "cmd_revoke"))
