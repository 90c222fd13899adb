"""No key creates a key with more power than its own.

Power is every dimension a key has: tenant (checked by the caller: a tenant admin has only its own), role (the
rate-limit tier and the `access.yaml` role), scopes, the networks it may be used from, its expiry and its own tool
rules. Each comparison is conservative: when a pattern or network cannot be shown to be inside the creator's, it is
refused, never guessed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.admin.model import OPERATOR_ROLE, is_operator
from gateway.auth.keyrecord import IPNetwork
from gateway.auth.principal import ANONYMOUS_ROLE, Principal
from gateway.policy.base import is_glob
from gateway.policy.snapshot import Snapshot

DEFAULT_ROLE = "user"


@dataclass(frozen=True, slots=True)
class KeyPower:
    """What a new key would hold."""

    role: str
    scopes: frozenset[str]
    networks: tuple[IPNetwork, ...]  # empty: any address
    expires_at: float | None  # epoch seconds; None: never
    tools_allow: tuple[str, ...]
    tools_deny: tuple[str, ...]


def known_roles(snapshot: Snapshot) -> frozenset[str]:
    """Roles a key may be given: `user`, `operator`, and every role the policy names (rate-limit tiers, keys.yaml
    keys, access.yaml rules without wildcards). `anonymous` is the role of callers without a credential, never a
    key's."""
    roles = {DEFAULT_ROLE, OPERATOR_ROLE, *snapshot.limits.tiers}
    roles.update(k.role for k in snapshot.keys.values())
    roles.update(r.role for r in snapshot.access_rules if not is_glob(r.role))
    roles.discard(ANONYMOUS_ROLE)
    return frozenset(roles)


def _inside(net: IPNetwork, nets: Iterable[IPNetwork]) -> bool:
    return any(net.version == n.version and net.subnet_of(n) for n in nets)  # type: ignore[arg-type]


def exceeds(creator: Principal, new: KeyPower) -> list[str]:
    """The fields in which `new` would hold more than `creator` (empty: it holds no more)."""
    out: list[str] = []
    if not is_operator(creator) and new.role != creator.role:
        # a role is a rate-limit tier and an access.yaml role: another one can only be judged by an operator
        out.append("role")
    if not new.scopes <= creator.scopes:
        out.append("scopes")
    if creator.networks and (not new.networks or not all(_inside(n, creator.networks) for n in new.networks)):
        out.append("allow_ips")
    if creator.expires_at is not None and (new.expires_at is None or new.expires_at > creator.expires_at):
        out.append("expires_at")
    rules = creator.tools
    if rules is not None and not rules.shadow:
        # the creator's own tool rules travel with everything it makes: every deny pattern, and allow patterns
        # only from its own allow list
        if not set(rules.deny_patterns) <= set(new.tools_deny):
            out.append("tools_deny")
        if rules.allow_patterns and (not new.tools_allow or not set(new.tools_allow) <= set(rules.allow_patterns)):
            out.append("tools_allow")
    return out
