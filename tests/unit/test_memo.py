"""The bounded memo: computes a key once, and never holds more than its bound."""

from __future__ import annotations

import pytest

from gateway.memo import Memo

pytestmark = pytest.mark.unit


def test_computes_once_per_key_and_stays_bounded() -> None:
    calls: list[int] = []

    def square(n: int) -> int:
        calls.append(n)
        return n * n

    memo: Memo[int, int] = Memo(square, max_entries=3)
    assert [memo(2), memo(2), memo(3)] == [4, 4, 9]
    assert calls == [2, 3]
    for n in range(100):  # a stream of new keys (as hostile clients send) costs recomputation, not memory
        assert memo(n) == n * n
        assert len(memo) <= 3


def test_a_none_result_is_remembered_too() -> None:
    calls: list[str] = []

    def nothing(key: str) -> None:
        calls.append(key)

    memo: Memo[str, None] = Memo(nothing)
    assert memo("a") is None and memo("a") is None
    assert calls == ["a"]
