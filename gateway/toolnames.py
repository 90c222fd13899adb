"""The `tool` label of the per-tool metrics: a tool name the policy names, or `_other`.

A tool name is whatever the client puts in `params.name`, so it cannot be a label as it comes: a flood of made-up
names would make a series each (memory in every process, in Prometheus, in every dashboard query). Only names an
operator wrote into the policy get their own series: a server's `tool_costs` keys and the plain (non-wildcard)
names of the tool rules in tenants.yaml, access.yaml and keys.yaml. Every other name, and every name in a policy
pattern's wildcard, is counted under `_other`. The set is built once per snapshot, so the label costs one set
lookup per request.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.policy.base import is_glob
from gateway.policy.snapshot import Snapshot
from gateway.policy.tenants import ToolRules

OTHER_TOOL = "_other"


def named_tools(snapshot: Snapshot) -> frozenset[str]:
    """Every tool name the policy spells out (wildcard patterns name no tool)."""
    names: set[str] = set()
    for server in snapshot.servers.values():
        names.update(server.tool_costs)
    rules: Iterable[ToolRules] = (
        *(t.tools for t in snapshot.tenants.values()),
        *(r.tools for r in snapshot.access_rules),
        *(k.tools for k in snapshot.keys.values()),
    )
    for rule in rules:
        names.update(p for p in (*rule.allow, *rule.deny) if not is_glob(p))
    return frozenset(names)


class ToolLabels:
    """`label(snapshot, tool)`: the tool's own name if the snapshot names it, else `_other`. Remembers the set of
    the last snapshot it saw (a request keeps its snapshot, so two snapshots alternate only around a reload)."""

    __slots__ = ("_names", "_snapshot")

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._names: frozenset[str] = frozenset()

    def label(self, snapshot: Snapshot | None, tool: str) -> str:
        if snapshot is None:
            return OTHER_TOOL
        if snapshot is not self._snapshot:
            self._names = named_tools(snapshot)
            self._snapshot = snapshot
        return tool if tool in self._names else OTHER_TOOL
