"""Authz.list_view: what decides a caller's tools, resources and prompts lists, compared across two snapshots to
send `list_changed` on reload (gateway/transports/listchanged.py). Each kind changes only when its own inputs do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.auth.principal import Principal
from gateway.filters.authz import Authz
from gateway.policy.model import PolicySet
from gateway.policy.snapshot import Snapshot

pytestmark = pytest.mark.unit

UP = [{"url": "http://127.0.0.1:1/mcp"}]


def authz(
    *,
    key_scopes: list[str] | None = None,
    access: list[dict[str, Any]] | None = None,
    tenant_tools: dict[str, Any] | None = None,
    shared: bool = True,
) -> Authz:
    acme: dict[str, Any] = {"servers": ["a"] if shared else []}
    if tenant_tools is not None:
        acme["tools"] = tenant_tools
    policy = PolicySet.model_validate(
        {
            "servers": {"servers": {"a": {"upstreams": UP, "owner": "acme" if shared else "globex"}}},
            "tenants": {"tenants": {"acme": acme, "globex": {}}},
            "keys": {"keys": [{"id": "k1", "hash": "0" * 64, "tenant": "acme", "scopes": key_scopes or ["read"]}]},
            "access": {"rules": access or []},
        }
    )
    return Authz(Snapshot.build(policy, "v", Path("."), 0.0), "https://gw.example")


KEY = Principal(tenant="acme", subject="key:k1", scopes=frozenset({"read"}), key_id="k1")
JWT = Principal(tenant="acme", subject="alice", scopes=frozenset({"read", "write"}), method="jwt", issuer="idp")


def changed(before: Authz, after: Authz, who: Principal = KEY) -> set[str]:
    b, a = before.list_view("a", who), after.list_view("a", who)
    return {kind for kind in ("tools", "resources", "prompts") if getattr(b, kind) != getattr(a, kind)}


def test_the_same_policy_changes_nothing() -> None:
    assert changed(authz(), authz()) == set()


def test_a_tool_rule_for_the_callers_role_changes_only_tools() -> None:
    rule = {"tenant": "acme", "server": "a", "role": "user", "tools": {"deny": ["add"]}}
    assert changed(authz(), authz(access=[rule])) == {"tools"}


def test_a_rule_for_another_role_or_a_shadow_rule_changes_nothing() -> None:
    other = {"tenant": "acme", "server": "a", "role": "ops", "tools": {"deny": ["add"]}}
    shadow = {"tenant": "acme", "server": "a", "tools": {"deny": ["add"], "mode": "shadow"}}
    assert changed(authz(), authz(access=[other, shadow])) == set()


def test_tenant_tool_rules_change_tools() -> None:
    assert changed(authz(), authz(tenant_tools={"deny": ["echo"]})) == {"tools"}


def test_a_keys_yaml_scope_change_is_seen_from_the_new_key_record() -> None:
    # read -> read + write: the key may now call tools (its tools list shows them): only tools change
    assert changed(authz(key_scopes=["read"]), authz(key_scopes=["read", "write"])) == {"tools"}


def test_losing_the_route_changes_every_list() -> None:
    assert changed(authz(), authz(shared=False)) == {"tools", "resources", "prompts"}


def test_a_jwt_callers_view_follows_the_policy_not_a_key_record() -> None:
    rule = {"tenant": "acme", "server": "a", "tools": {"allow": ["echo"]}}
    assert changed(authz(key_scopes=["admin"]), authz(key_scopes=["read"]), JWT) == set()
    assert changed(authz(), authz(access=[rule]), JWT) == {"tools"}
