"""Compiled tool allow/deny rules: shell-style patterns turned into one regex per list, once per snapshot."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import translate


def _compile(patterns: Sequence[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns))


class ToolMatcher:
    """One allow/deny list. Deny wins; an empty allow list allows every tool."""

    __slots__ = ("_allow", "_deny", "has_allow", "shadow", "source")

    def __init__(self, allow: Sequence[str], deny: Sequence[str], *, shadow: bool = False, source: str = "") -> None:
        self._allow = _compile(allow)
        self._deny = _compile(deny)
        self.has_allow = bool(allow)
        self.shadow = shadow
        # where the rule came from ("tenant", "key", "access[2]"): goes into audit notes, never into metric labels
        self.source = source

    @property
    def empty(self) -> bool:
        return self._allow is None and self._deny is None

    def allows(self, tool: str) -> bool:
        if self._deny is not None and self._deny.match(tool):
            return False
        return self._allow is None or self._allow.match(tool) is not None


@dataclass(frozen=True, slots=True)
class ToolVerdict:
    allowed: bool
    denied_by: str | None = None
    shadow_denied_by: tuple[str, ...] = ()


ALLOW_ALL = ToolVerdict(True)


@dataclass(slots=True)
class ToolPolicy:
    """Every matcher that applies to one (tenant, server, role), plus a memo of verdicts per tool name."""

    matchers: tuple[ToolMatcher, ...]
    _memo: dict[str, ToolVerdict] = field(default_factory=dict)

    @property
    def filters_lists(self) -> bool:
        return any(not m.shadow for m in self.matchers)

    def verdict(self, tool: str, extra: ToolMatcher | None = None) -> ToolVerdict:
        if extra is None:
            hit = self._memo.get(tool)
            if hit is not None:
                return hit
        denied_by: str | None = None
        shadow: list[str] = []
        for m in (*self.matchers, extra) if extra is not None else self.matchers:
            if m.allows(tool):
                continue
            if m.shadow:
                shadow.append(m.source)
            elif denied_by is None:
                denied_by = m.source
        verdict = ToolVerdict(denied_by is None, denied_by, tuple(shadow)) if (denied_by or shadow) else ALLOW_ALL
        if extra is None:
            if len(self._memo) > 4096:  # tool names come from clients: keep the memo bounded
                self._memo.clear()
            self._memo[tool] = verdict
        return verdict
