"""All policy files together, as validated (not yet compiled)."""

from __future__ import annotations

from pydantic import Field

from gateway.policy.access import AccessFile
from gateway.policy.base import Model
from gateway.policy.keys import KeysFile
from gateway.policy.limits import LimitsFile
from gateway.policy.servers import ServersFile
from gateway.policy.tenants import TenantsFile

# file name -> model of that file; the order is the order errors are reported in
POLICY_FILES: dict[str, type[Model]] = {
    "servers.yaml": ServersFile,
    "tenants.yaml": TenantsFile,
    "keys.yaml": KeysFile,
    "limits.yaml": LimitsFile,
    "access.yaml": AccessFile,
}


class PolicySet(Model):
    servers: ServersFile = Field(default_factory=ServersFile)
    tenants: TenantsFile = Field(default_factory=TenantsFile)
    keys: KeysFile = Field(default_factory=KeysFile)
    limits: LimitsFile = Field(default_factory=LimitsFile)
    access: AccessFile = Field(default_factory=AccessFile)
