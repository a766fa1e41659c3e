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


def test_lookups_renew_recency_and_the_first_writer_wins() -> None:
    """get moves an entry to the most recent end; a second put under a held key keeps the first
    value (as the reference's cache does) and charges nothing more."""
    cache: MemoryCache[_Entry] = MemoryCache(100)
    first, second = _Entry(10), _Entry(10)
    assert cache.put("a", first)
    assert cache.put("b", _Entry(10))
    assert cache.get("a") is first
    assert cache.keys() == ["b", "a"]
    assert not cache.put("a", second)
    assert cache.get("a") is first
    assert cache.bytes == 20
    assert cache.get("missing") is None


def test_a_zero_budget_disables_the_tier() -> None:
    """Budget 0: nothing is admitted, not even an entry charged nothing."""
    cache: MemoryCache[_Entry] = MemoryCache(0)
    assert not cache.enabled
    assert not cache.admits(1)
    assert not cache.put("a", _Entry(0))
    assert not cache.put("b", _Entry(1))
    assert len(cache) == 0


def test_remove_gives_back_the_charge() -> None:
    """remove returns the entry and frees its bytes, grown ones included."""
    cache: MemoryCache[_Entry] = MemoryCache(100)
    entry = _Entry(30)
    cache.put("a", entry)
    cache.grow("a", 20)
    assert cache.remove("a") is entry
    assert cache.bytes == 0
    assert cache.charge_of("a") is None
    assert cache.remove("a") is None


def test_admitting_evicts_as_many_old_entries_as_it_takes() -> None:
    """One large entry pushes out several small least-recently-used ones, oldest first."""
    cache: MemoryCache[_Entry] = MemoryCache(100)
    for key in "abcde":
        cache.put(key, _Entry(20))
    cache.get("a")
    assert cache.put("big", _Entry(70))
    assert cache.keys() == ["a", "big"]
    assert cache.bytes == 90
