"""A small bounded, thread-safe LRU map for per-process caches."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable


class LRU[K: Hashable, V]:
    """Keeps at most `max_entries` items, dropping the least recently used first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The item, marked as recently used; None when absent."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        """Store an item, evicting past the bound."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def pop(self, key: K) -> None:
        """Forget an item."""
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        """Forget every item."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
