"""Stage 3: authorization: the tenant may reach the server, the scope allows the method, the tool is allowed.

Tool rules come from three places, all checked: the tenant's own (tenants.yaml), access.yaml rules matching the
tenant, server and role, and the credential's (keys). Deny wins; a rule in `mode: shadow` is evaluated and recorded
(`ctx.shadow`, metric) but not enforced. A denied tool is also removed from `tools/list` answers (JSON and SSE,
through `ctx.transform`), so a client never sees what it may not call.

Refusals are 403 with a JSON-RPC error, never 404 (MCP clients read 404 as 'session gone'). On OAuth routes a
scope refusal carries `WWW-Authenticate: Bearer error="insufficient_scope"` so a client can step up; other routes
and other refusals carry no challenge (it would start an OAuth flow that cannot help).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import partial
from typing import Any

from aiohttp import web

from gateway.auth.keyrecord import tool_matcher
from gateway.auth.principal import Principal
from gateway.auth.scopes import required_scope, scope_allows
from gateway.auth.state import AUTH, metadata_url
from gateway.auth.tokens import oauth_scopes_for
from gateway.auth.tools import ToolMatcher, ToolPolicy
from gateway.context import RequestContext, ShadowDecision
from gateway.errors import Forbidden, Unauthenticated
from gateway.jsonrpc import JsonRpcId, Kind
from gateway.policy.access import AccessRule
from gateway.policy.snapshot import Snapshot
from gateway.policy.tenants import ToolRules

_MEMO_LIMIT = 4096


def _matcher(rules: ToolRules, source: str) -> ToolMatcher | None:
    if not rules.allow and not rules.deny:
        return None
    return ToolMatcher(rules.allow, rules.deny, shadow=rules.mode == "shadow", source=source)


@dataclass(frozen=True, slots=True)
class _AccessMatcher:
    tenant: str
    role: str
    matcher: ToolMatcher

    def applies(self, tenant: str, role: str) -> bool:
        return fnmatchcase(tenant, self.tenant) and fnmatchcase(role, self.role)


def _access_for_server(rules: tuple[AccessRule, ...], server: str) -> tuple[_AccessMatcher, ...]:
    out: list[_AccessMatcher] = []
    for i, rule in enumerate(rules):
        if not fnmatchcase(server, rule.server):
            continue
        m = _matcher(rule.tools, f"access[{i}]")
        if m is not None:
            out.append(_AccessMatcher(rule.tenant, rule.role, m))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _OAuthRoute:
    resource_metadata: str
    scopes_for: Callable[[str], list[str]]


def _list_filter(
    policy: ToolPolicy, extra: ToolMatcher | None, ids: frozenset[JsonRpcId]
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def transform(msg: dict[str, Any]) -> dict[str, Any]:
        if msg.get("id") not in ids:
            return msg
        result = msg.get("result")
        if not isinstance(result, dict):
            return msg
        tools = result.get("tools")
        if not isinstance(tools, list):
            return msg
        kept = [
            t
            for t in tools
            # a tool without a readable name cannot be checked, so it is not shown
            if isinstance(t, dict) and isinstance(t.get("name"), str) and policy.verdict(t["name"], extra).allowed
        ]
        if len(kept) == len(tools):
            return msg
        return {**msg, "result": {**result, "tools": kept}}

    return transform


_MAX_TRACKED_TOOLS = 10_000


def _recording(
    seen: dict[str, bool], ids: frozenset[JsonRpcId], then: Callable[[dict[str, Any]], dict[str, Any]] | None
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Note each listed tool's readOnlyHint (before any filtering), then hand the message on."""

    def transform(msg: dict[str, Any]) -> dict[str, Any]:
        result = msg.get("result") if msg.get("id") in ids else None
        tools = result.get("tools") if isinstance(result, dict) else None
        if isinstance(tools, list):
            for t in tools:
                if isinstance(t, dict) and isinstance(name := t.get("name"), str):
                    hints = t.get("annotations")
                    if name in seen or len(seen) < _MAX_TRACKED_TOOLS:
                        seen[name] = isinstance(hints, dict) and hints.get("readOnlyHint") is True
        return then(msg) if then is not None else msg

    return transform


class Authz:
    stage = "authz"

    def __init__(
        self,
        snapshot: Snapshot,
        public_url: str,
        on_deny: Any = None,
        on_shadow: Any = None,
        readonly_tools: dict[str, dict[str, bool]] | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._trusted = frozenset(n for n, s in snapshot.servers.items() if s.auth.trust_tool_annotations)
        # runtime state shared across snapshots: what trusted upstreams said about their tools
        self._readonly: dict[str, dict[str, bool]] = readonly_tools if readonly_tools is not None else {}
        self._on_deny: Callable[[str, str], None] | None = on_deny
        self._on_shadow: Callable[[str], None] | None = on_shadow
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
        # keys.yaml keys' own rules, for principals built without them (`mcp-gateway explain`); authn puts the
        # rules of the key it verified on the principal itself (PostgreSQL keys included)
        self._key_tools: dict[str, ToolMatcher | None] = {
            kid: tool_matcher(k.tools.allow, k.tools.deny, k.tools.mode == "shadow") for kid, k in snapshot.keys.items()
        }
        self._tenant_tools: dict[str, ToolMatcher | None] = {
            name: _matcher(t.tools, "tenant") for name, t in snapshot.tenants.items()
        }
        self._access: dict[str, tuple[_AccessMatcher, ...]] = {
            name: _access_for_server(snapshot.access_rules, name) for name in snapshot.servers
        }
        self._oauth: dict[str, _OAuthRoute] = {}
        for name, server in snapshot.servers.items():
            jwt_policy = server.auth.jwt
            if server.auth.oauth and jwt_policy is not None:
                self._oauth[name] = _OAuthRoute(metadata_url(public_url, name), partial(oauth_scopes_for, jwt_policy))
        # (server, tenant, role) -> compiled tool policy; filled on first use, bounded (roles come from tokens)
        self._policies: dict[tuple[str, str, str], ToolPolicy] = {}

    def tool_policy(self, server: str, principal: Principal) -> ToolPolicy:
        tenant = principal.tenant or ""
        key = (server, tenant, principal.role)
        policy = self._policies.get(key)
        if policy is not None:
            return policy
        matchers: list[ToolMatcher] = []
        own = self._tenant_tools.get(tenant)
        if own is not None:
            matchers.append(own)
        matchers.extend(a.matcher for a in self._access.get(server, ()) if a.applies(tenant, principal.role))
        policy = ToolPolicy(tuple(matchers))
        if len(self._policies) >= _MEMO_LIMIT:
            self._policies.clear()
        self._policies[key] = policy
        return policy

    def _deny(self, ctx: RequestContext, message: str, reason: str, headers: dict[str, str] | None = None) -> Forbidden:
        if self._on_deny is not None:
            self._on_deny(ctx.server_name, reason)
        return Forbidden(message, reason=reason, headers=headers)

    async def __call__(self, ctx: RequestContext) -> None:
        principal = ctx.principal
        if principal is None:  # authn always sets one; refuse closed if it did not
            raise self._deny(ctx, "no principal", "no_principal")
        if principal.expires_at is not None and principal.expires_at <= time.time():
            # only a connection authenticated earlier (WebSocket) can get here with a credential that has expired
            raise Unauthenticated("credential expired during the connection", reason="credential_expired")
        server = ctx.server_name
        if not principal.is_anonymous:
            reach = self._reach.get(server, frozenset())
            if reach is not None and principal.tenant not in reach:
                raise self._deny(ctx, f"tenant may not use server {server!r}", "server_not_allowed")
        policy: ToolPolicy | None = None
        list_ids: list[JsonRpcId] = []
        own_rules = principal.tools
        if own_rules is None and principal.key_id is not None:
            own_rules = self._key_tools.get(principal.key_id)
        for env in ctx.envelopes:
            if env.method is None:  # responses to server requests are the caller's own answers
                continue
            method = env.method
            if env.kind is not Kind.REQUEST:
                # notifications are scoped too: `notifications/*` need read, an extension notification (a method
                # the scope table does not know) needs admin, so nothing reaches the upstream unchecked
                if not scope_allows(principal.scopes, method):
                    raise self._scope_denied(ctx, principal, method)
                continue
            if not scope_allows(principal.scopes, method) and not self._readonly_call(server, principal, env.tool):
                raise self._scope_denied(ctx, principal, method)
            if method == "tools/list":
                list_ids.append(env.id)
                continue
            tool = env.tool
            if tool is None:
                continue
            if policy is None:
                policy = self.tool_policy(server, principal)
            verdict = policy.verdict(tool, own_rules)
            if verdict.shadow_denied_by:
                self._shadow(ctx, tool, verdict.shadow_denied_by)
            if not verdict.allowed:
                ctx.notes["tool_denied_by"] = verdict.denied_by
                raise self._deny(ctx, f"tool {tool!r} is not allowed", "tool_denied")
        if list_ids:
            policy = policy or self.tool_policy(server, principal)
            extra = own_rules if own_rules is not None and not own_rules.shadow else None
            ids = frozenset(list_ids)
            transform = _list_filter(policy, extra, ids) if policy.filters_lists or extra is not None else None
            if server in self._trusted:
                transform = _recording(self._readonly.setdefault(server, {}), ids, transform)
            ctx.transform = transform

    def _readonly_call(self, server: str, principal: Principal, tool: str | None) -> bool:
        """A `read` caller may call a tool a trusted upstream marked read-only (MCP-NOTES section 7)."""
        if tool is None or server not in self._trusted or not scope_allows(principal.scopes, "tools/list"):
            return False
        return self._readonly.get(server, {}).get(tool, False)

    def _scope_denied(self, ctx: RequestContext, principal: Principal, method: str) -> Forbidden:
        need = required_scope(method)
        headers: dict[str, str] | None = None
        oauth = self._oauth.get(ctx.server_name)
        if oauth is not None and principal.method == "jwt":
            scope = " ".join(oauth.scopes_for(need))
            headers = {
                "WWW-Authenticate": (
                    f'Bearer error="insufficient_scope", scope="{scope}", resource_metadata="{oauth.resource_metadata}"'
                )
            }
        err = self._deny(ctx, f"scope does not allow {method}", "scope_denied", headers)
        err.data["requiredScope"] = need
        return err

    def _shadow(self, ctx: RequestContext, tool: str, sources: tuple[str, ...]) -> None:
        ctx.shadow.append(ShadowDecision("authz", "tool_denied"))
        ctx.notes["shadow_tool_denied_by"] = list(sources)
        if self._on_shadow is not None:
            self._on_shadow(ctx.server_name)


def build(snapshot: Snapshot, app: web.Application) -> Authz:
    state = app.get(AUTH)
    if state is None or state.metrics is None:
        return Authz(
            snapshot,
            state.public_url if state is not None else "",
            readonly_tools=state.readonly_tools if state is not None else None,
        )
    m = state.metrics
    return Authz(
        snapshot,
        state.public_url,
        on_deny=lambda server, reason: m.authz_denied.labels(server, reason).inc(),
        on_shadow=lambda server: m.authz_shadow.labels(server).inc(),
        readonly_tools=state.readonly_tools,
    )
