"""The memory tier's accounting: entries are charged what they report, and what they grow by."""

from __future__ import annotations

from dataclasses import dataclass

from pkgloader.cache.memory import MemoryCache


@dataclass
class _Entry:
    charged_bytes: int


def test_entries_are_charged_what_they_report_not_a_file_size() -> None:
    """put charges charged_bytes, evicts least recently used to fit, refuses an entry over
    the whole budget."""
    cache: MemoryCache[_Entry] = MemoryCache(100)
    assert cache.put("a", _Entry(40))
    assert cache.put("b", _Entry(40))
    assert cache.bytes == 80
    cache.get("a")  # now b is the least recently used
    assert cache.put("c", _Entry(40))
    assert cache.keys() == ["a", "c"]
    assert cache.bytes == 80
    assert not cache.put("huge", _Entry(101))
    assert "huge" not in cache


def test_grow_charges_values_kept_later_and_evicts_to_fit() -> None:
    """grow adds bytes an entry holds after admission (memoized responses): others are evicted
    to fit, and an entry that alone outgrows the budget leaves."""
    cache: MemoryCache[_Entry] = MemoryCache(100)
    cache.put("a", _Entry(30))
    cache.put("b", _Entry(30))
    cache.grow("b", 50)
    assert cache.keys() == ["b"]
    assert cache.bytes == 80
    assert cache.charge_of("b") == 80
    cache.grow("b", 30)
    assert len(cache) == 0
    assert cache.bytes == 0
    cache.grow("gone", 10)  # not held: nothing to charge
    assert cache.bytes == 0
