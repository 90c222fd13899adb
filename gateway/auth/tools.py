"""Compiled tool allow/deny rules: shell-style patterns turned into one regex per list, once per snapshot."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import translate

from gateway.bounds import MEMO_KEY_MAX


def _compile(patterns: Sequence[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns))


class ToolMatcher:
    """One allow/deny list. Deny wins; an empty allow list allows every tool."""

    __slots__ = ("_allow", "_deny", "allow_patterns", "deny_patterns", "has_allow", "shadow", "source")

    def __init__(self, allow: Sequence[str], deny: Sequence[str], *, shadow: bool = False, source: str = "") -> None:
        self._allow = _compile(allow)
        self._deny = _compile(deny)
        # the patterns as written: the admin API compares a new key's rules with its creator's
        self.allow_patterns = tuple(allow)
        self.deny_patterns = tuple(deny)
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
    """Every matcher that applies to one (tenant, server, role), plus a memo of verdicts per tool name.

    Tool names come from clients: the memo holds at most 4096 names of at most MEMO_KEY_MAX characters, and only
    for callers that authenticated (`remember`), so it can cost memory only a bounded amount, and nobody's
    unauthenticated requests can spend it."""

    matchers: tuple[ToolMatcher, ...]
    _memo: dict[str, ToolVerdict] = field(default_factory=dict)

    @property
    def filters_lists(self) -> bool:
        return any(not m.shadow for m in self.matchers)

    def verdict(self, tool: str, extra: ToolMatcher | None = None, *, remember: bool = True) -> ToolVerdict:
        remember = remember and extra is None and len(tool) <= MEMO_KEY_MAX
        if remember:
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
        if remember:
            if len(self._memo) > 4096:
                self._memo.clear()
            self._memo[tool] = verdict
        return verdict
