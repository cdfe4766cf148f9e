"""The embeddings an agent has computed, keyed by (model, sha256 of the text).

The seed keyed its cache by Python's ``hash(text)``, which differs between processes and
collides; sha256 is the same on every node, so the gateway's consistent hashing and the agents'
caches agree on what "the same text" is. Bounded by entries and by bytes (``kiln._caching``).
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np

from kiln._caching import Cache, Stats

__all__ = ["EmbeddingCache", "Entry", "Key", "Stats", "text_key", "text_keys"]

Key = tuple[str, bytes]  # (model, sha256 digest of the text)


class Entry(NamedTuple):
    """What is kept for one text: its vector (read-only), its token count, whether it was cut."""

    vector: np.ndarray
    tokens: int
    truncated: bool


# Stored as a plain tuple, and an ``Entry`` only when read. A tuple of an array and two numbers
# is dropped from the garbage collector's tracking at its first pass; a NamedTuple stays
# tracked, and 100k of them made every full collection, and so every store, slower (4.4 us a
# text against 1.9 on the 2-core VM).
_Stored = tuple[np.ndarray, int, bool]


def _entry(stored: _Stored | None) -> Entry | None:
    return None if stored is None else Entry._make(stored)


def text_key(model: str, text: str) -> Key:
    return model, hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def text_keys(model: str, texts: list[str]) -> list[Key]:
    """``text_key`` of each text. An agent computes them once a call, for the lookup and the
    store both (the raw digest, not its hex: a hex string per text cost more than hashing)."""
    sha = hashlib.sha256
    return [(model, sha(text.encode("utf-8", "surrogatepass")).digest()) for text in texts]


class EmbeddingCache:
    """An LRU of entries by (model, text); ``get`` counts hits and misses."""

    def __init__(self, max_entries: int = 100_000, max_bytes: int = 256 * 2**20) -> None:
        self._cache: Cache[Key, _Stored] = Cache(
            max_entries, max_bytes=max_bytes, sizeof=lambda e: e[0].nbytes)
        self.max_entries, self.max_bytes = max_entries, max_bytes

    def get(self, model: str, text: str) -> Entry | None:
        return _entry(self._cache.get(text_key(model, text)))

    def put(self, model: str, text: str, vector: np.ndarray, tokens: int = 0,
            truncated: bool = False) -> None:
        if self.max_entries == 0 or vector.nbytes > self.max_bytes:
            return  # checked before the copy: a vector that will not be kept is not copied
        stored = np.array(vector, copy=True)
        stored.setflags(write=False)  # callers get this very array back: nobody may change it
        self._cache.put(text_key(model, text), (stored, int(tokens), bool(truncated)))

    def get_many(self, keys: list[Key]) -> list[Entry | None]:
        """The entries of ``keys`` (``text_keys``), None where missing."""
        return [None if e is None else Entry._make(e) for e in self._cache.get_many(keys)]

    def put_many(self, keys: list[Key], vectors: np.ndarray, tokens: np.ndarray,
                 truncated: np.ndarray) -> None:
        """``put`` of each row of ``vectors`` under ``keys``, with one copy of the block: the
        rows are read-only views of it. One copy and one lock a call, and no numpy scalar per
        text: an agent stores every text it encodes, so this runs at the GPU's rate, and per
        text work here once cost more than the GPU took to encode the text (13 us a text)."""
        if self.max_entries == 0 or not keys:
            return
        block = np.array(vectors, dtype=np.float32, copy=True)
        block.setflags(write=False)
        stored = zip(block, np.asarray(tokens).tolist(), np.asarray(truncated).tolist(),
                     strict=True)
        self._cache.put_many(list(zip(keys, stored, strict=True)))

    @property
    def hits(self) -> int:
        return self._cache.hits

    @property
    def misses(self) -> int:
        return self._cache.misses

    def clear(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)

    def stats(self) -> Stats:
        return self._cache.stats()
