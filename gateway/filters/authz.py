"""Stage 3: authorization: the tenant may reach the server, the scope allows the method, the tool is allowed.

Refusals are 403 with a JSON-RPC error, never 404 (MCP clients read 404 as 'session gone').
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from aiohttp import web

from gateway.auth.scopes import scope_allows
from gateway.context import RequestContext
from gateway.errors import Forbidden
from gateway.jsonrpc import Kind
from gateway.policy.snapshot import Snapshot
from gateway.policy.tenants import ToolRules


def tool_allowed(rules: ToolRules, tool: str) -> bool:
    if any(fnmatchcase(tool, pat) for pat in rules.deny):
        return False
    return not rules.allow or any(fnmatchcase(tool, pat) for pat in rules.allow)


class Authz:
    stage = "authz"

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        # server -> tenants allowed (None = any tenant), compiled once per snapshot
        self._reach: dict[str, frozenset[str] | None] = {}
        owners: dict[str, set[str]] = {name: set() for name in snapshot.servers}
        for tname, tenant in snapshot.tenants.items():
            for s in tenant.servers:
                owners.setdefault(s, set()).add(tname)
        for name, server in snapshot.servers.items():
            allowed = set(owners.get(name, set()))
            if server.owner:
                allowed.add(server.owner)
            if "*" in server.shared_with:
                self._reach[name] = None
            else:
                self._reach[name] = frozenset(allowed | set(server.shared_with))

    async def __call__(self, ctx: RequestContext) -> None:
        principal = ctx.principal
        if principal is None:  # authn always sets one; refuse closed if it did not
            raise Forbidden("no principal", reason="no_principal")
        if not principal.is_anonymous:
            reach = self._reach.get(ctx.server_name, frozenset())
            if reach is not None and principal.tenant not in reach:
                raise Forbidden(f"tenant may not use server {ctx.server_name!r}", reason="server_not_allowed")
        tenant = self._snapshot.tenants.get(principal.tenant or "")
        key = self._snapshot.keys.get(principal.key_id) if principal.key_id else None
        for env in ctx.envelopes:
            if env.kind is not Kind.REQUEST or env.method is None:
                continue
            if not scope_allows(principal.scopes, env.method):
                raise Forbidden(f"scope does not allow {env.method}", reason="scope_denied")
            tool = env.tool
            if tool is not None:
                if tenant is not None and not tool_allowed(tenant.tools, tool):
                    raise Forbidden(f"tool {tool!r} is not allowed", reason="tool_denied")
                if key is not None and not tool_allowed(key.tools, tool):
                    raise Forbidden(f"tool {tool!r} is not allowed", reason="tool_denied")


def build(snapshot: Snapshot, app: web.Application) -> Authz:
    return Authz(snapshot)
