"""A bounded LRU of embeddings, keyed by (model, sha256 of the text).

The seed keyed its cache by Python's ``hash(text)``, which differs between processes and
collides; sha256 is the same on every node, so the gateway's consistent hashing and the agents'
caches agree on what "the same text" is. Bounded by entries and by bytes, because a cache that
grows with traffic ends by taking the GPU node's memory.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import NamedTuple

import numpy as np


class Entry(NamedTuple):
    """What is kept for one text: its vector (read-only), its token count, whether it was cut."""

    vector: np.ndarray
    tokens: int
    truncated: bool


class Stats(NamedTuple):
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    max_entries: int
    max_bytes: int


def text_key(model: str, text: str) -> tuple[str, str]:
    return model, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class EmbeddingCache:
    """Thread-safe LRU; ``get`` counts hits and misses, ``put`` evicts the least recently used."""

    def __init__(self, max_entries: int = 100_000, max_bytes: int = 256 * 2**20) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("max_entries and max_bytes must be >= 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._data: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def get(self, model: str, text: str) -> Entry | None:
        key = text_key(model, text)
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, model: str, text: str, vector: np.ndarray, tokens: int = 0,
            truncated: bool = False) -> None:
        size = int(vector.nbytes)
        if self.max_entries == 0 or size > self.max_bytes:
            return
        stored = np.array(vector, copy=True)
        stored.setflags(write=False)  # callers get this very array back: nobody may change it
        key = text_key(model, text)
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old.vector.nbytes
            self._data[key] = Entry(stored, int(tokens), bool(truncated))
            self._bytes += size
            while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
                _, evicted = self._data.popitem(last=False)
                self._bytes -= evicted.vector.nbytes
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    def stats(self) -> Stats:
        with self._lock:
            return Stats(self.hits, self.misses, self.evictions, len(self._data), self._bytes,
                         self.max_entries, self.max_bytes)
