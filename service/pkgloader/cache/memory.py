"""`MemoryCache`: the in-process tier in front of the disk cache.

Policy: a least-recently-used map of hash → parsed package, bounded by what the entries really
hold in process memory (`budget` bytes; 0 disables it). An entry is charged what it reports as
`charged_bytes` when admitted — for a package: its bytes, plus what its parse keeps (tar.gz
members, inflater checkpoints, trees, manifest) — and whatever it later reports through `grow`
(memoized metadata, serialized responses). Charging the file size instead let 40 tar.gz files of
8.6 KB hold 337 MiB under a 344 KB charge (issue 10). An entry larger than the whole budget is
never admitted (it is served, not kept). Admitting or growing evicts the least recently used
entries until everything fits. The reference's cache is unbounded; ours never is.
Evicting an entry drops the cache's reference only: a Load already streaming it completes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, Protocol, TypeVar


class Charged(Protocol):
    @property
    def charged_bytes(self) -> int: ...


T = TypeVar("T", bound=Charged)


class MemoryCache(Generic[T]):
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: OrderedDict[str, T] = OrderedDict()
        self._charges: dict[str, int] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._removals = 0  # remove() calls, under _lock

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    @property
    def bytes(self) -> int:
        """What the entries are charged in all (never more than the budget)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def admits(self, size: int) -> bool:
        """Whether an entry charged `size` bytes (at least) could be admitted at all."""
        return 0 < size <= self.budget

    def charge_of(self, key: str) -> int | None:
        with self._lock:
            return self._charges.get(key)

    def get(self, key: str) -> T | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    @property
    def removals(self) -> int:
        """How many `remove` calls there have been: a stamp for `put`'s `unless_removed_since`."""
        with self._lock:
            return self._removals

    def put(self, key: str, value: T, *, unless_removed_since: int | None = None) -> bool:
        """Admit `value` unless it is too large; the first writer wins, as in the reference.
        With `unless_removed_since` (a `removals` stamp), not if anything was removed since: a
        value built slowly in the background must not undo an Evict that came meanwhile."""
        charge = value.charged_bytes
        if not self.admits(charge):
            return False
        with self._lock:
            if unless_removed_since is not None and self._removals != unless_removed_since:
                return False
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key] is value
            self._entries[key] = value
            self._charges[key] = charge
            self._bytes += charge
            self._evict_to_fit(keep=key)
            return True

    def grow(self, key: str, extra: int) -> None:
        """Charge the entry under `key` `extra` more bytes it now holds (derived values kept
        with it); evicts others, or the entry itself when it alone outgrows the budget."""
        with self._lock:
            if key not in self._entries:
                return
            self._charges[key] += extra
            self._bytes += extra
            if self._charges[key] > self.budget:
                self._pop(key)
            self._evict_to_fit(keep=key)

    def remove(self, key: str) -> T | None:
        with self._lock:
            self._removals += 1
            return self._pop(key)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def _pop(self, key: str) -> T | None:
        value = self._entries.pop(key, None)
        if value is not None:
            self._bytes -= self._charges.pop(key)
        return value

    def _evict_to_fit(self, keep: str) -> None:
        while self._bytes > self.budget:
            oldest = next(iter(self._entries))
            if oldest == keep:
                if len(self._entries) == 1:
                    return
                self._entries.move_to_end(keep)
                continue
            self._pop(oldest)
