"""The stages' bounded cache: least recently used out first, and safe to share between stage
3's threads."""

from __future__ import annotations

import threading

import pytest

from detector.lru import LRU


def test_it_forgets_the_least_recently_used_and_remembers_misses():
    cache: LRU[int | None] = LRU(2)
    calls: list[str] = []

    def compute(key: str, value: int | None) -> int | None:
        calls.append(key)
        return value

    assert cache.get_or("a", lambda: compute("a", 1)) == 1
    assert cache.get_or("b", lambda: compute("b", None)) is None  # a miss is a value too
    assert cache.get_or("a", lambda: compute("a", 9)) == 1  # kept; now the most recent
    cache.get_or("c", lambda: compute("c", 3))  # b, the least recently used, goes
    assert "b" not in cache and "a" in cache and "c" in cache and len(cache) == 2
    assert cache.get_or("b", lambda: compute("b", None)) is None
    assert calls == ["a", "b", "c", "b"]
    with pytest.raises(ValueError):
        LRU(0)


def test_a_thread_computing_a_value_holds_up_no_other_thread():
    """Stage 3's threads compute catalog keypoints through one cache: a slow computation of
    one key must not make a thread asking for another key wait for it."""
    cache: LRU[str] = LRU(4)
    computing, other_done = threading.Event(), threading.Event()

    def slow() -> str:
        computing.set()
        # waits until the other thread has had its own value from the cache
        return "slow" if other_done.wait(timeout=10) else "blocked"

    def other() -> None:
        cache.get_or("fast", lambda: "fast")
        other_done.set()

    results: list[str] = []
    first = threading.Thread(target=lambda: results.append(cache.get_or("slow", slow)))
    first.start()
    assert computing.wait(timeout=10)
    second = threading.Thread(target=other)
    second.start()
    first.join(timeout=15)
    second.join(timeout=15)
    assert results == ["slow"] and other_done.is_set()
    assert cache.get_or("slow", lambda: "again") == "slow"
    assert cache.get_or("fast", lambda: "again") == "fast"
