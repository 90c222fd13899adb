"""The frozen, validated policy every request reads once at entry and keeps for its whole life."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from gateway.auth.keyrecord import KeyRecord, from_policy
from gateway.policy.access import AccessRule
from gateway.policy.keys import ApiKeyPolicy
from gateway.policy.limits import LimitsFile
from gateway.policy.model import PolicySet
from gateway.policy.servers import ServerPolicy
from gateway.policy.tenants import TenantPolicy


@dataclass(frozen=True, slots=True)
class Snapshot:
    policy: PolicySet
    # sha256 over the policy files' bytes (first 16 hex chars): identifies the snapshot in logs and metrics
    version: str
    source_dir: Path
    loaded_at: float
    servers: Mapping[str, ServerPolicy] = field(default_factory=dict)
    tenants: Mapping[str, TenantPolicy] = field(default_factory=dict)
    keys: Mapping[str, ApiKeyPolicy] = field(default_factory=dict)
    # keys.yaml's keys as authn verifies them (principal, compiled networks and tool rules): built with the
    # snapshot, in the reload's thread, not on the event loop (2,000 keys with tool rules cost ~80 ms there)
    key_records: Mapping[str, KeyRecord] = field(default_factory=dict)
    access_rules: tuple[AccessRule, ...] = ()

    @property
    def limits(self) -> LimitsFile:
        return self.policy.limits

    @classmethod
    def build(cls, policy: PolicySet, version: str, source_dir: Path, loaded_at: float) -> Snapshot:
        return cls(
            policy=policy,
            version=version,
            source_dir=source_dir,
            loaded_at=loaded_at,
            servers=MappingProxyType(dict(policy.servers.servers)),
            tenants=MappingProxyType(dict(policy.tenants.tenants)),
            keys=MappingProxyType({k.id: k for k in policy.keys.keys}),
            key_records=MappingProxyType({k.id: from_policy(k) for k in policy.keys.keys}),
            access_rules=tuple(policy.access.rules),
        )
