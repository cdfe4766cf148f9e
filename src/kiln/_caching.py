"""Every cache in kiln: a cachetools LRU (or TTL) cache behind a lock, bounded, with counts.

kiln caches embeddings per agent, shipped functions per agent, hash rings per router and
completions per notebook. Each is bounded (by entries, and by bytes where its values vary in
size), because a cache that grows with traffic ends by taking the node's memory, and each
counts hits, misses and evictions, because a cache nobody can see into cannot be tuned.

cachetools' caches are not thread-safe and bound one size only; ``Cache`` adds the lock, a
bound on entries beside one on bytes, the counters, and ``get_or_make``, which builds a
missing value outside the lock (a slow build never blocks a hit) and once per key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, NamedTuple, TypeVar

import cachetools

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Stats(NamedTuple):
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    max_entries: int
    max_bytes: int | None


class _Counted:
    """Mixed into a cachetools cache: counts evictions and bounds entries beside bytes."""

    max_entries: int
    evictions: int

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)  # type: ignore[misc]
        while len(self) > self.max_entries:  # type: ignore[arg-type]
            self.popitem()

    def popitem(self) -> tuple[Any, Any]:
        item = super().popitem()  # type: ignore[misc]
        self.evictions += 1
        return item


class _LRU(_Counted, cachetools.LRUCache):
    pass


class _TTL(_Counted, cachetools.TTLCache):
    pass


class Cache(Generic[K, V]):
    """A thread-safe LRU of at most ``max_entries`` values (and ``max_bytes``, by ``sizeof``).

    With ``ttl`` (seconds) a value is also forgotten that long after it was stored. A value
    larger than ``max_bytes`` is not stored.
    """

    def __init__(self, max_entries: int, *, max_bytes: int | None = None,
                 sizeof: Callable[[V], int] | None = None, ttl: float | None = None) -> None:
        if max_entries < 0 or (max_bytes is not None and max_bytes < 0):
            raise ValueError("max_entries and max_bytes must be >= 0")
        if (max_bytes is None) != (sizeof is None):
            raise ValueError("max_bytes and sizeof go together")
        self.max_entries, self.max_bytes = max_entries, max_bytes
        # cachetools bounds one size: bytes when given (entries are bounded by _Counted), else
        # entries, plus one so that its own bound never fires before _Counted's does
        size = max_bytes if max_bytes is not None else max_entries + 1
        data: cachetools.Cache = (_TTL(size, ttl, timer=time.monotonic, getsizeof=sizeof)
                                  if ttl is not None else _LRU(size, getsizeof=sizeof))
        data.max_entries, data.evictions = max_entries, 0
        self._data = data
        self._lock = threading.Lock()
        self._building: dict[K, threading.Lock] = {}
        self.hits = self.misses = 0

    def get(self, key: K) -> V | None:
        """The value stored under ``key`` (now the most recently used), or None."""
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._put(key, value)

    def get_many(self, keys: list[K]) -> list[V | None]:
        """``get`` of each key under one take of the lock (an agent looks up 2,048 texts a
        call: a lock per text cost more than the lookups)."""
        with self._lock:
            found = [self._data.get(key) for key in keys]
            hits = sum(value is not None for value in found)
            self.hits += hits
            self.misses += len(found) - hits
            return found

    def put_many(self, items: list[tuple[K, V]]) -> None:
        with self._lock:
            for key, value in items:
                self._put(key, value)

    def _put(self, key: K, value: V) -> None:
        if self.max_entries == 0:
            return
        try:
            self._data[key] = value
        except ValueError:  # cachetools: larger than max_bytes on its own; not kept
            self._data.pop(key, None)

    def get_or_make(self, key: K, make: Callable[[], V]) -> tuple[V, bool]:
        """(value, made now): the cached value of ``key``, or ``make()`` stored under it.

        ``make`` runs outside the cache's lock, so hits never wait behind it, and under a lock
        of its key, so two threads that miss the same key make it once.
        """
        with self._lock:
            found = self._data.get(key)
            if found is not None:
                self.hits += 1
                return found, False
            key_lock = self._building.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                found = self._data.get(key)  # made by the thread this one waited for
                if found is not None:
                    self.hits += 1
                    return found, False
            try:
                value = make()
            finally:
                with self._lock:
                    self._building.pop(key, None)
            with self._lock:
                self.misses += 1
                self._put(key, value)
            return value, True

    def keys(self) -> list[K]:
        with self._lock:
            return list(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())

    @property
    def evictions(self) -> int:
        return self._data.evictions

    def stats(self) -> Stats:
        with self._lock:
            size = int(self._data.currsize) if self.max_bytes is not None else 0
            return Stats(self.hits, self.misses, self._data.evictions, len(self._data), size,
                         self.max_entries, self.max_bytes)
