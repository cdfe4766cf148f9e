"""kiln's one cache (cachetools behind a lock): bounded by entries, bytes or age, and counted."""

from __future__ import annotations

import threading
import time

import pytest

from kiln._caching import Cache


def test_a_miss_then_a_hit_are_counted():
    cache: Cache[str, int] = Cache(4)
    assert cache.get("a") is None
    cache.put("a", 1)
    assert cache.get("a") == 1
    assert (cache.hits, cache.misses) == (1, 1)


def test_the_least_recently_used_entry_goes_when_entries_are_full():
    cache: Cache[str, int] = Cache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.get("a")
    cache.put("c", 3)
    assert cache.keys() == ["a", "c"]
    assert cache.stats().evictions == 1


def test_entries_and_bytes_bound_together():
    cache: Cache[str, bytes] = Cache(3, max_bytes=10, sizeof=len)
    for key in "abcd":
        cache.put(key, b"xx")  # 2 bytes each: entries, not bytes, evict here
    assert len(cache) == 3 and cache.stats().bytes == 6
    cache.put("big", b"x" * 9)  # bytes evict now: 6 + 9 > 10 until one small value is left
    assert cache.stats().bytes == 9 and cache.keys() == ["big"]
    cache.put("huge", b"x" * 11)  # larger than the cache: not kept, nothing evicted for it
    assert cache.get("huge") is None and cache.keys() == ["big"]


def test_a_cache_of_no_entries_keeps_nothing():
    cache: Cache[str, int] = Cache(0)
    cache.put("a", 1)
    assert len(cache) == 0 and cache.stats().evictions == 0


def test_a_value_older_than_the_ttl_is_a_miss():
    cache: Cache[str, int] = Cache(8, ttl=0.05)
    cache.put("a", 1)
    assert cache.get("a") == 1
    time.sleep(0.1)
    assert cache.get("a") is None


def test_two_threads_missing_one_key_make_it_once():
    cache: Cache[str, int] = Cache(8)
    made = []
    gate = threading.Event()

    def make() -> int:
        made.append(1)
        gate.wait(5)
        return 42

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_make("k", make)))
               for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join(5)
    assert len(made) == 1
    assert sorted(results) == [(42, False), (42, True)]
    assert (cache.hits, cache.misses) == (1, 1)


def test_a_make_that_raises_stores_nothing_and_the_next_call_makes_again():
    cache: Cache[str, int] = Cache(8)

    def boom() -> int:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        cache.get_or_make("k", boom)
    assert cache.get_or_make("k", lambda: 7) == (7, True)


def test_bounds_are_checked():
    with pytest.raises(ValueError):
        Cache(-1)
    with pytest.raises(ValueError):
        Cache(4, max_bytes=10)  # bytes need a way to size a value
