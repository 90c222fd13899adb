"""Stage 3: authorization: the tenant may reach the server, the scope allows the method, the tool is allowed.

Tool rules come from three places, all checked: the tenant's own (tenants.yaml), access.yaml rules matching the
tenant, server and role, and the credential's (keys). Deny wins; a rule in `mode: shadow` is evaluated and recorded
(`ctx.shadow`, metric) but not enforced. A denied tool is also removed from every tools list sent to the caller
(`ctx.transform`, set on every request of a caller with hidden tools, GET streams included): the filter goes by the
answer's shape, not by which request it seems to answer (filters/lists.py says why), so a client never sees what
it may not call.

Refusals are 403 with a JSON-RPC error, never 404 (MCP clients read 404 as 'session gone'), with one exception: a
server the tenant may not use is answered exactly like a server that does not exist (404 `unknown_server`; the
audit record's `notes.route_refused` says which), so a key cannot be used to find other tenants' routes. On OAuth
routes a scope refusal carries `WWW-Authenticate: Bearer error="insufficient_scope"` so a client can step up; other
routes and other refusals carry no challenge (it would start an OAuth flow that cannot help).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import partial
from typing import Any, NamedTuple

from gateway.auth.keyrecord import epoch_seconds
from gateway.auth.pgkeys import PostgresKeyStore
from gateway.auth.principal import Principal
from gateway.auth.scopes import required_scope, scope_allows
from gateway.auth.state import AuthState, metadata_url
from gateway.auth.tokens import oauth_scopes_for
from gateway.auth.tools import ToolMatcher, ToolPolicy
from gateway.bounds import NAME_MAX
from gateway.context import RequestContext, ShadowDecision
from gateway.errors import Forbidden, NotFound, Unauthenticated
from gateway.filters.lists import Transform
from gateway.jsonrpc import Kind
from gateway.policy.access import AccessRule
from gateway.policy.snapshot import Snapshot
from gateway.policy.tenants import ToolRules

_MEMO_LIMIT = 4096
# `_reach` default for a name that is not a server of the snapshot
_NO_SUCH_SERVER: frozenset[str] = frozenset({"\x00no such server"})


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


def _list_filter(policy: ToolPolicy, extra: ToolMatcher | None) -> Transform:
    def transform(msg: dict[str, Any]) -> dict[str, Any]:
        # any message shaped like a tools/list result, whatever its id: ids are the client's and may repeat
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


def _recording(seen: dict[str, bool], then: Transform | None) -> Transform:
    """Note each listed tool's readOnlyHint (before any filtering), then hand the message on."""

    def transform(msg: dict[str, Any]) -> dict[str, Any]:
        result = msg.get("result")
        tools = result.get("tools") if isinstance(result, dict) else None
        if isinstance(tools, list):
            for t in tools:
                if isinstance(t, dict) and isinstance(name := t.get("name"), str):
                    hints = t.get("annotations")
                    if len(name) <= NAME_MAX and (name in seen or len(seen) < _MAX_TRACKED_TOOLS):
                        seen[name] = isinstance(hints, dict) and hints.get("readOnlyHint") is True
        return then(msg) if then is not None else msg

    return transform


def _callable_only(trusted: bool, then: Transform | None) -> Transform:
    """For a caller whose scopes do not allow `tools/call`: a tools list keeps only what it may still call, the
    tools a trusted upstream marks read-only (none on other servers), so a list never offers a tool the caller would
    be refused (issue 16). Runs before the rule filter, after the read-only hints were recorded."""

    def transform(msg: dict[str, Any]) -> dict[str, Any]:
        result = msg.get("result")
        tools = result.get("tools") if isinstance(result, dict) else None
        if isinstance(tools, list) and isinstance(result, dict):
            kept = [t for t in tools if trusted and _read_only(t)]
            if len(kept) != len(tools):
                msg = {**msg, "result": {**result, "tools": kept}}
        return then(msg) if then is not None else msg

    return transform


def _read_only(tool: Any) -> bool:
    hints = tool.get("annotations") if isinstance(tool, dict) else None
    return isinstance(hints, dict) and hints.get("readOnlyHint") is True


class ListView(NamedTuple):
    """The inputs that decide one caller's tools, resources and prompts lists (Authz.list_view)."""

    tools: tuple[object, ...]
    resources: tuple[object, ...]
    prompts: tuple[object, ...]


def _rules_of(matcher: ToolMatcher | None) -> tuple[object, ...] | None:
    """A matcher's rules as comparable values; a shadow rule hides nothing from lists."""
    if matcher is None or matcher.shadow:
        return None
    return (matcher.allow_patterns, matcher.deny_patterns)


class Authz:
    stage = "authz"

    def __init__(
        self,
        snapshot: Snapshot,
        public_url: str,
        on_deny: Any = None,
        on_shadow: Any = None,
        readonly_tools: dict[str, dict[str, bool]] | None = None,
        key_store: PostgresKeyStore | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._key_store = key_store
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
        self._key_tools: dict[str, ToolMatcher | None] = {kid: r.tools for kid, r in snapshot.key_records.items()}
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
        # the same key -> that policy's list filter (None: it hides nothing); a closure built once, not per request
        self._list_filters: dict[tuple[str, str, str, ToolMatcher | None, bool], Transform | None] = {}
        # caller kind -> what it may list (list_view), for list_changed notifications on reload
        self._views: dict[tuple[object, ...], ListView] = {}

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

    def _hidden(self, ctx: RequestContext, why: str) -> NotFound:
        """A server this tenant may not use gets the answer of a server that does not exist (route discovery); the
        audit record keeps which it was (`notes.route_refused`)."""
        known = why != "unknown_server"
        if self._on_deny is not None:
            # an unknown name is the caller's string: never a metric label
            self._on_deny(ctx.server_name if known else "_unknown", why)
        ctx.notes["route_refused"] = why
        return NotFound(f"no MCP server named {ctx.server_name!r}")

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
        if principal.key_source is not None and ctx.transport == "websocket" and not self.key_still_valid(principal):
            # only a WebSocket authenticates once for many messages: a key revoked, removed or re-hashed since
            # the upgrade must not keep working on a socket opened before
            raise Unauthenticated("API key revoked during the connection", reason="key_revoked")
        server = ctx.server_name
        reach = self._reach.get(server, _NO_SUCH_SERVER)
        if reach is _NO_SUCH_SERVER:
            raise self._hidden(ctx, "unknown_server")
        if not principal.is_anonymous and reach is not None and principal.tenant not in reach:
            raise self._hidden(ctx, "server_not_allowed")
        policy: ToolPolicy | None = None
        lists = False
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
                lists = True
                continue
            tool = env.tool
            if tool is None:
                continue
            if policy is None:
                policy = self.tool_policy(server, principal)
            # an anonymous caller's tool names are judged, never remembered
            verdict = policy.verdict(tool, own_rules, remember=not principal.is_anonymous)
            if verdict.shadow_denied_by:
                self._shadow(ctx, tool, verdict.shadow_denied_by)
            if not verdict.allowed:
                ctx.notes["tool_denied_by"] = verdict.denied_by
                raise self._deny(ctx, f"tool {tool!r} is not allowed", "tool_denied")
        # Every answer this request brings back is filtered for the caller, not only the answer to a tools/list it
        # asked: a tools list can arrive on any stream (a reused id, a replayed event, a batch array).
        extra = own_rules if own_rules is not None and not own_rules.shadow else None
        transform = self._list_filter(server, principal, extra, scope_allows(principal.scopes, "tools/call"))
        if lists and server in self._trusted:
            transform = _recording(self._readonly.setdefault(server, {}), transform)
        ctx.transform = transform

    def key_still_valid(self, principal: Principal) -> bool:
        """The API key behind a long-lived connection, judged by the keys in force now: keys.yaml's of this
        snapshot; PostgreSQL's as this process has them cached (refreshed in the background when stale, so a
        revocation through another replica arrives within the cache TTL; unknown is not a refusal)."""
        kid = principal.key_id
        if kid is None or principal.key_source is None:
            return True  # not an API key's principal (JWT, anonymous, a token judged by its own checks)
        if principal.key_source == "policy":
            key = self._snapshot.keys.get(kid)
            if key is None or key.revoked or key.hash != principal.key_hash:
                return False
            expires_at = epoch_seconds(key.expires_at)
            return expires_at is None or expires_at > time.time()
        if self._key_store is None:
            return True
        return self._key_store.recheck(kid, principal.key_hash) is not False

    def _list_filter(
        self, server: str, principal: Principal, extra: ToolMatcher | None, can_call: bool
    ) -> Transform | None:
        """The caller's list filter: the policy's and the credential's own tool rules, and for a caller that may not
        call tools, only the tools it may still call. Built once per combination, never per request (a key's own
        rules are one ToolMatcher per key record, so the memo is bounded by the keys)."""
        key = (server, principal.tenant or "", principal.role, extra, can_call)
        try:
            return self._list_filters[key]
        except KeyError:
            pass
        policy = self.tool_policy(server, principal)
        transform = _list_filter(policy, extra) if extra is not None or policy.filters_lists else None
        if not can_call:
            transform = _callable_only(server in self._trusted, transform)
        if len(self._list_filters) >= _MEMO_LIMIT:
            self._list_filters.clear()
        self._list_filters[key] = transform
        return transform

    def list_view(self, server: str, principal: Principal) -> ListView:
        """What `principal` may see listed on `server` under this snapshot, per list kind (tools, resources,
        prompts), as values two snapshots' views can be compared by: the inputs of the caller's list filter and of
        the scope checks, never the lists themselves (the upstream's). A keys.yaml key is judged by its record in
        this snapshot (a reload may change its scopes or tool rules); other credentials by what they presented.
        Memoized per caller kind, like the list filters."""
        scopes, role, own = principal.scopes, principal.role, principal.tools
        kid = principal.key_id
        if principal.method == "api_key" and kid is not None:
            record = self._snapshot.keys.get(kid)
            if record is not None:
                scopes, role, own = frozenset(record.scopes), record.role, self._key_tools.get(kid)
        tenant = principal.tenant or ""
        own_rules = _rules_of(own)
        key = (server, tenant, role, scopes, own_rules, principal.is_anonymous)
        view = self._views.get(key)
        if view is not None:
            return view
        reach = self._reach.get(server, _NO_SUCH_SERVER)
        reachable = reach is not _NO_SUCH_SERVER and (principal.is_anonymous or reach is None or tenant in reach)
        rules: tuple[object, ...] = ()
        if reachable:
            caller = Principal(tenant=principal.tenant, subject=principal.subject, role=role, scopes=scopes)
            rules = tuple(r for m in self.tool_policy(server, caller).matchers if (r := _rules_of(m)) is not None)
        tools = (
            reachable,
            scope_allows(scopes, "tools/list"),
            scope_allows(scopes, "tools/call"),
            server in self._trusted,
            rules,
            own_rules,
        )
        resources = (reachable, scope_allows(scopes, "resources/list"), scope_allows(scopes, "resources/read"))
        prompts = (reachable, scope_allows(scopes, "prompts/list"), scope_allows(scopes, "prompts/get"))
        view = ListView(tools, resources, prompts)
        if len(self._views) >= _MEMO_LIMIT:
            self._views.clear()
        self._views[key] = view
        return view

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


def build(snapshot: Snapshot, state: AuthState) -> Authz:
    if state.metrics is None:
        return Authz(snapshot, state.public_url, readonly_tools=state.readonly_tools, key_store=state.key_store)
    m = state.metrics
    return Authz(
        snapshot,
        state.public_url,
        on_deny=lambda server, reason: m.authz_denied.labels(server, reason).inc(),
        on_shadow=lambda server: m.authz_shadow.labels(server).inc(),
        readonly_tools=state.readonly_tools,
        key_store=state.key_store,
    )
