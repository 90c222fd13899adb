"""The frozen, validated policy every request reads once at entry and keeps for its whole life."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

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
            access_rules=tuple(policy.access.rules),
        )
