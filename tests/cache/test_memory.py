"""`MemoryCache` at its own level: what `put(unless_removed_since=)` promises a value built in
the background (a promotion behind a Load) against a `remove` (an Evict) that came meanwhile."""

from __future__ import annotations

from dataclasses import dataclass

from pkgloader.cache.memory import MemoryCache


@dataclass
class Entry:
    charged_bytes: int = 10


def test_a_put_stamped_before_a_remove_is_refused() -> None:
    memory: MemoryCache[Entry] = MemoryCache(100)
    stamp = memory.removals
    memory.remove("other")  # any remove since the stamp, even of an absent key
    assert not memory.put("a", Entry(), unless_removed_since=stamp)
    assert "a" not in memory
    assert memory.bytes == 0


def test_a_put_stamped_after_the_last_remove_is_admitted() -> None:
    memory: MemoryCache[Entry] = MemoryCache(100)
    memory.put("a", Entry())
    memory.remove("a")
    stamp = memory.removals
    assert memory.put("a", Entry(), unless_removed_since=stamp)
    assert memory.get("a") is not None
    assert memory.bytes == 10


def test_evictions_to_fit_are_not_removals() -> None:
    """Making room evicts by pressure, not by request: it does not spoil a stamp."""
    memory: MemoryCache[Entry] = MemoryCache(25)
    stamp = memory.removals
    for key in "abc":
        assert memory.put(key, Entry())
    assert "a" not in memory
    assert memory.removals == stamp
    assert memory.put("d", Entry(), unless_removed_since=stamp)
