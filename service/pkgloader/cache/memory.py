"""`MemoryCache`: the in-process tier in front of the disk cache.

Policy: a least-recently-used map of hash → parsed package whose bytes live in process memory,
bounded by the sum of package sizes (`budget` bytes; 0 disables it). A package larger than the
whole budget is never admitted (it is served from its file instead). Admitting evicts the least
recently used entries until the new one fits. The reference's cache is unbounded; ours never is.
Evicting an entry drops the cache's reference only: a Load already streaming it completes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, Protocol, TypeVar


class Sized(Protocol):
    @property
    def size(self) -> int: ...


T = TypeVar("T", bound=Sized)


class MemoryCache(Generic[T]):
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: OrderedDict[str, T] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def admits(self, size: int) -> bool:
        return 0 < size <= self.budget

    def get(self, key: str) -> T | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def put(self, key: str, value: T) -> bool:
        """Admit `value` unless it is too large; the first writer wins, as in the reference."""
        if not self.admits(value.size):
            return False
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return True
            while self._entries and self._bytes + value.size > self.budget:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.size
            self._entries[key] = value
            self._bytes += value.size
            return True

    def remove(self, key: str) -> T | None:
        with self._lock:
            value = self._entries.pop(key, None)
            if value is not None:
                self._bytes -= value.size
            return value

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)
