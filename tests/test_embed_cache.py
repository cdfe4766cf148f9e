"""The embedding cache: bounded by entries and bytes, LRU, counted, exact."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.embeddings._cache import EmbeddingCache, text_key, text_keys


def vec(seed: int, dim: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def test_a_repeated_text_is_a_counted_hit_with_the_identical_vector():
    cache = EmbeddingCache()
    original = vec(1)
    assert cache.get("m", "hello") is None
    cache.put("m", "hello", original, tokens=3)
    entry = cache.get("m", "hello")
    assert entry is not None and entry.tokens == 3
    assert entry.vector.tobytes() == original.tobytes()
    assert (cache.hits, cache.misses) == (1, 1)


def test_cached_vectors_are_read_only_copies():
    cache = EmbeddingCache()
    original = vec(2)
    cache.put("m", "t", original)
    original[:] = 0  # the caller's array changing must not change the cache
    entry = cache.get("m", "t")
    assert entry.vector.any()
    with pytest.raises(ValueError):
        entry.vector[0] = 1.0


def test_the_model_is_part_of_the_key():
    cache = EmbeddingCache()
    cache.put("a", "t", vec(3))
    assert cache.get("b", "t") is None
    assert text_key("a", "t") != text_key("b", "t")
    # sha256, the same on every node (Python's hash() of a str differs between processes)
    assert text_key("a", "t")[1].hex() == "e3b98a4da31a127d4bde6e43033f66ba274cab0eb7eb1c70ec41402bf6273dd8"
    assert text_keys("a", ["t", "u"]) == [text_key("a", "t"), text_key("a", "u")]


def test_least_recently_used_goes_first_when_entries_are_full():
    cache = EmbeddingCache(max_entries=2)
    cache.put("m", "a", vec(1))
    cache.put("m", "b", vec(2))
    cache.get("m", "a")           # a is now the most recent
    cache.put("m", "c", vec(3))   # so b goes
    assert cache.get("m", "b") is None
    assert cache.get("m", "a") is not None and cache.get("m", "c") is not None
    assert cache.stats().evictions == 1 and len(cache) == 2


def test_bytes_are_bounded():
    cache = EmbeddingCache(max_entries=1000, max_bytes=3 * 16)  # three float32 (4,) vectors
    for i in range(10):
        cache.put("m", str(i), vec(i))
    stats = cache.stats()
    assert stats.entries == 3 and stats.bytes == 48 and stats.evictions == 7


def test_a_vector_larger_than_the_cache_is_not_kept():
    cache = EmbeddingCache(max_bytes=8)
    cache.put("m", "big", vec(1))
    assert len(cache) == 0


def test_a_block_stored_at_once_reads_back_row_by_row_as_read_only_copies():
    cache = EmbeddingCache(max_entries=2)
    block = np.stack([vec(1), vec(2), vec(3)])
    cache.put_many(text_keys("m", ["a", "b", "c"]), block, np.array([1, 2, 3]), np.array([False, True, False]))
    block[:] = 0  # the caller's array is theirs: the cache kept its own copy
    found = cache.get_many(text_keys("m", ["a", "b", "c", "d"]))
    assert found[0] is None  # bounded by entries: "a" went first
    assert found[3] is None
    assert np.array_equal(found[1].vector, vec(2)) and found[1].tokens == 2 and found[1].truncated
    assert np.array_equal(found[2].vector, vec(3)) and not found[2].vector.flags.writeable
    assert (cache.hits, cache.misses) == (2, 2)
