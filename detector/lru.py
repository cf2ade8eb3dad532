"""The one bounded cache the stages share: a mapping that forgets its least recently used
entry. Each stage owns its own instances (keypoints, descriptors, decoded images); stage 3's
threads share theirs, so an LRU may be used from several threads at once."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    """At most ``limit`` values by key; ``None`` is a value like any other (a remembered miss,
    such as a catalog file that cannot be read any more). Safe to use from several threads:
    a value is computed outside the lock, so two threads asking for one key at once may both
    compute it (the values must be the same for a key, as every stage's are)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("an LRU holds at least one entry")
        self.limit = limit
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get_or(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The value kept for ``key`` (now the most recently used), or ``compute()`` kept."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()  # outside the lock: other threads go on with other keys meanwhile
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)  # another thread may have put it in meanwhile
            if len(self._items) > self.limit:
                self._items.popitem(last=False)
        return value
