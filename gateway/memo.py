"""A bounded memo of a pure function: the hot path looks up values it would otherwise recompute per request.

Emptied when full rather than evicting one entry at a time: keys can come from clients (tool names, session ids),
so a hostile stream of new keys costs recomputation, never memory, and the common case stays one dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    __slots__ = ("_data", "_fn", "_max")

    def __init__(self, fn: Callable[[K], V], max_entries: int = 4096) -> None:
        self._fn = fn
        self._max = max_entries
        self._data: dict[K, V] = {}

    def __call__(self, key: K) -> V:
        data = self._data
        value = data.get(key, _MISSING)
        if value is _MISSING:
            value = self._fn(key)
            if len(data) >= self._max:
                data.clear()
            data[key] = value
        return value  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self._data)


_MISSING: object = object()
