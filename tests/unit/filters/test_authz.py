"""Authorization stage on compiled policy: tenant reach, method scopes, tool rules from tenant / access.yaml /
key (deny wins, shadow records), tools/list filtering, and the insufficient_scope challenge only on OAuth routes."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.auth.principal import Principal, anonymous_principal
from gateway.auth.tools import ToolMatcher
from gateway.context import RequestContext
from gateway.errors import Forbidden, NotFound, Unauthenticated
from gateway.filters.authz import Authz
from gateway.policy.snapshot import Snapshot
from gateway.testing import api_key_principal, context, rpc, snapshot, tool_call

pytestmark = pytest.mark.unit

PUBLIC = "https://gw.example"


def build_snapshot() -> Snapshot:
    up = [{"url": "http://127.0.0.1:1/mcp"}]
    oauth = {
        "methods": ["jwt"],
        "jwt": {
            "issuer": "https://idp",
            "jwks_url": "https://idp/jwks",
            "authorization_servers": ["https://idp"],
            "scope_map": {"mcp:call": ["write"], "mcp:read": ["read"]},
        },
    }
    return snapshot(
        {
            "a": {"upstreams": up, "owner": "acme"},
            "shared": {"upstreams": up, "owner": "acme", "shared_with": ["globex"]},
            "open": {"upstreams": up, "shared_with": ["*"]},
            "oauth": {"upstreams": up, "owner": "acme", "auth": oauth},
            "trusted": {"upstreams": up, "owner": "acme", "auth": {"trust_tool_annotations": True}},
        },
        version="v",
        tenants={
            "acme": {"servers": ["a"], "tools": {"deny": ["secret_*"]}},
            "globex": {"tools": {"allow": ["echo", "add"]}},
        },
        keys=[{"id": "k9", "hash": "0" * 64, "tenant": "acme", "tools": {"deny": ["add"]}}],
        access=[
            {"tenant": "acme", "server": "a", "role": "intern", "tools": {"deny": ["add"]}},
            {"server": "shared", "tools": {"deny": ["echo"], "mode": "shadow"}},
        ],
    )


SNAP = build_snapshot()
AUTHZ = Authz(SNAP, PUBLIC)


def ctx(server: str, principal: Principal | None, *messages: dict[str, Any]) -> RequestContext:
    return context(server, *messages, snap=SNAP, principal=principal, request_id="r")


def call(tool: str, rpc_id: int = 1) -> dict[str, Any]:
    return tool_call(tool, rpc_id=rpc_id)


def listing(rpc_id: int = 1) -> dict[str, Any]:
    return rpc("tools/list", rpc_id=rpc_id)


def key(tenant: str = "acme", scopes: tuple[str, ...] = ("read", "write"), **kw: Any) -> Principal:
    return api_key_principal(tenant, scopes, **kw)


async def refused(c: RequestContext) -> Forbidden:
    with pytest.raises(Forbidden) as info:
        await AUTHZ(c)
    return info.value


@pytest.mark.parametrize(
    ("server", "tenant", "allowed"),
    [
        ("a", "acme", True),
        ("a", "globex", False),
        ("shared", "globex", True),
        ("open", "globex", True),
        ("open", "anyone", True),
    ],
)
async def test_tenant_reach(server: str, tenant: str, allowed: bool) -> None:
    c = ctx(server, key(tenant), listing())
    if allowed:
        await AUTHZ(c)
    else:
        # answered like a server that does not exist (route discovery); the audit notes keep the truth
        with pytest.raises(NotFound) as info:
            await AUTHZ(c)
        assert (info.value.status, info.value.reason) == (404, "unknown_server")
        assert str(info.value) == f"no MCP server named {server!r}"
        assert c.notes["route_refused"] == "server_not_allowed"


async def test_unknown_server_is_refused_for_every_principal() -> None:
    for principal in (key("acme"), anonymous_principal(frozenset({"read"}), "127.0.0.1")):
        c = ctx("a", principal, listing())
        c.server_name, c.server = "nosuch", None
        with pytest.raises(NotFound) as info:
            await AUTHZ(c)
        assert (info.value.reason, str(info.value)) == ("unknown_server", "no MCP server named 'nosuch'")
        assert c.notes["route_refused"] == "unknown_server"


async def test_scopes_map_methods() -> None:
    ro = key(scopes=("read",))
    await AUTHZ(ctx("a", ro, listing()))
    err = await refused(ctx("a", ro, call("echo")))
    assert (err.status, err.reason, err.data["requiredScope"]) == (403, "scope_denied", "write")
    assert "WWW-Authenticate" not in err.headers  # API-key principal, not an OAuth route
    # unknown/extension methods need admin
    ext = {"jsonrpc": "2.0", "id": 2, "method": "vendor/frobnicate"}
    assert (await refused(ctx("a", key(), ext))).reason == "scope_denied"
    await AUTHZ(ctx("a", key(scopes=("admin",)), ext))
    # MCP notifications need only read; a response to a server request needs nothing
    await AUTHZ(ctx("a", ro, {"jsonrpc": "2.0", "method": "notifications/initialized"}))
    await AUTHZ(ctx("a", ro, {"jsonrpc": "2.0", "id": 7, "result": {}}))
    # an extension notification is not a way around the scope table: it needs admin like an extension request
    ext_note = {"jsonrpc": "2.0", "method": "vendor/frobnicate"}
    assert (await refused(ctx("a", key(), ext_note))).reason == "scope_denied"
    await AUTHZ(ctx("a", key(scopes=("admin",)), ext_note))


async def test_every_batch_element_is_authorized() -> None:
    err = await refused(ctx("a", key(scopes=("read",)), listing(1), call("echo", 2)))
    assert err.reason == "scope_denied"


async def test_insufficient_scope_challenge_only_for_jwt_on_oauth_route() -> None:
    jwt_reader = Principal(tenant="acme", subject="u", scopes=frozenset({"read"}), method="jwt", issuer="https://idp")
    err = await refused(ctx("oauth", jwt_reader, call("echo")))
    assert err.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", scope="mcp:call", '
        f'resource_metadata="{PUBLIC}/.well-known/oauth-protected-resource/mcp/oauth"'
    )
    # the same refusal for an API key on that route carries no challenge (step-up cannot help a key)
    assert "WWW-Authenticate" not in (await refused(ctx("oauth", key(scopes=("read",)), call("echo")))).headers


@pytest.mark.parametrize(
    ("server", "principal", "tool", "allowed"),
    [
        ("a", key(), "echo", True),
        ("a", key(), "secret_admin_tool", False),  # tenant deny (pattern)
        ("a", key(role="intern"), "add", False),  # access.yaml rule for this tenant, server and role
        ("a", key(), "add", True),  # ... which does not apply to other roles
        ("shared", key("globex"), "whoami", False),  # tenant allow list
        ("shared", key("globex"), "add", True),
        ("a", key(tools=ToolMatcher([], ["add"], source="key")), "add", False),  # the key's own rule
        ("a", key(tools=ToolMatcher(["echo"], [], source="key")), "add", False),
        ("a", key(tools=ToolMatcher(["echo"], [], source="key")), "echo", True),
    ],
)
async def test_tool_rules(server: str, principal: Principal, tool: str, allowed: bool) -> None:
    c = ctx(server, principal, call(tool))
    if allowed:
        await AUTHZ(c)
    else:
        err = await refused(c)
        assert (err.status, err.reason) == (403, "tool_denied")


async def test_shadow_rule_records_and_lets_through() -> None:
    c = ctx("shared", key(), call("echo"))
    await AUTHZ(c)
    assert [(s.stage, s.reason) for s in c.shadow] == [("authz", "tool_denied")]
    assert c.notes["shadow_tool_denied_by"] == ["access[1]"]


async def test_tools_list_answer_filtered() -> None:
    c = ctx("a", key(tools=ToolMatcher([], ["add"], source="key")), listing(7))
    await AUTHZ(c)
    assert c.transform is not None
    tools = [{"name": n} for n in ("echo", "add", "secret_admin_tool", "whoami")] + [{"nameless": 1}, "junk"]
    answer = {"jsonrpc": "2.0", "id": 7, "result": {"tools": tools, "nextCursor": "c"}}
    out = c.transform(answer)
    assert out["result"] == {"tools": [{"name": "echo"}, {"name": "whoami"}], "nextCursor": "c"}
    # other messages of the answer stream pass untouched (same object: the forwarder relays the bytes)
    note = {"jsonrpc": "2.0", "method": "notifications/message", "params": {}}
    assert c.transform(note) is note
    # a tools list under another id is filtered all the same: ids are the client's and may repeat (issue 14)
    other = {"jsonrpc": "2.0", "id": 8, "result": {"tools": tools}}
    assert c.transform(other)["result"]["tools"] == [{"name": "echo"}, {"name": "whoami"}]
    unchanged = {"jsonrpc": "2.0", "id": 7, "result": {"tools": [{"name": "echo"}]}}
    assert c.transform(unchanged) is unchanged


async def test_no_transform_when_nothing_is_hidden() -> None:
    c = ctx("open", key("globex2"), listing())
    await AUTHZ(c)
    assert c.transform is None


async def test_anonymous_principal() -> None:
    anon = anonymous_principal()
    await AUTHZ(ctx("a", anon, listing()))  # the route let it in; reach is not a tenant question
    assert (await refused(ctx("a", anon, call("echo")))).reason == "scope_denied"
    with pytest.raises(Forbidden) as info:
        await AUTHZ(ctx("a", None, listing()))
    assert info.value.reason == "no_principal"


async def test_credential_expired_during_a_long_connection() -> None:
    await AUTHZ(ctx("a", key(expires_at=time.time() + 60), listing()))
    with pytest.raises(Unauthenticated) as info:
        await AUTHZ(ctx("a", key(expires_at=time.time() - 1), listing()))
    assert (info.value.status, info.value.reason) == (401, "credential_expired")


def test_anonymous_sessions_are_bound_to_the_client_address() -> None:
    a, b = anonymous_principal(client_ip="192.0.2.1"), anonymous_principal(client_ip="192.0.2.2")
    assert a.binding_id != b.binding_id
    assert a.binding_id == anonymous_principal(client_ip="192.0.2.1").binding_id
    assert a.binding_id != key().binding_id


async def test_read_only_tools_of_trusted_servers_need_only_read() -> None:
    authz = Authz(SNAP, PUBLIC, readonly_tools={})
    ro = key(scopes=("read",))
    with pytest.raises(Forbidden):
        await authz(ctx("trusted", ro, call("echo")))  # nothing known yet: fail closed
    listed = ctx("trusted", ro, listing(9))
    await authz(listed)
    assert listed.transform is not None
    tools = [
        {"name": "echo", "annotations": {"readOnlyHint": True}},
        {"name": "add", "annotations": {"readOnlyHint": False}},
        {"name": "secret_x", "annotations": {"readOnlyHint": True}},
    ]
    out = listed.transform({"jsonrpc": "2.0", "id": 9, "result": {"tools": tools}})
    # only what this caller may call: `add` needs write, `secret_x` is denied by the tenant's rules (issue 16)
    assert [t["name"] for t in out["result"]["tools"]] == ["echo"]
    await authz(ctx("trusted", ro, call("echo")))
    with pytest.raises(Forbidden):
        await authz(ctx("trusted", ro, call("add")))
    with pytest.raises(Forbidden):  # a hidden tool stays refused even if it is read-only
        await authz(ctx("trusted", ro, call("secret_x")))
    with pytest.raises(Forbidden):  # no scope at all: no tools
        await authz(ctx("trusted", key(scopes=()), call("echo")))
    # the same hints from an untrusted server change nothing: a read-only caller may call none of its tools, so
    # its list is empty
    plain = ctx("a", ro, listing(9))
    await authz(plain)
    assert plain.transform is not None
    assert plain.transform({"jsonrpc": "2.0", "id": 9, "result": {"tools": tools}})["result"]["tools"] == []
    with pytest.raises(Forbidden):
        await authz(ctx("a", ro, call("echo")))


async def test_keys_yaml_rules_apply_to_a_principal_built_without_them() -> None:
    # `mcp-gateway explain` builds principals from keys.yaml ids; the key's own rules must still apply
    bare = Principal(tenant="acme", subject="key:k9", scopes=frozenset({"read", "write"}), key_id="k9")
    assert (await refused(ctx("a", bare, call("add")))).reason == "tool_denied"
    await AUTHZ(ctx("a", bare, call("echo")))


async def test_list_filters_are_built_once_not_per_request() -> None:
    """A read-only caller's and a key-rule caller's list filters were closures built on every request (review)."""
    authz = Authz(SNAP, PUBLIC)
    rules = ToolMatcher([], ["add"], source="key")
    for principal in (key(scopes=("read",)), key(tools=rules)):
        first, second = ctx("a", principal, listing(1)), ctx("a", principal, listing(2))
        await authz(first)
        await authz(second)
        assert first.transform is not None and first.transform is second.transform
