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

__all__ = ["EmbeddingCache", "Entry", "Stats", "text_key"]


class Entry(NamedTuple):
    """What is kept for one text: its vector (read-only), its token count, whether it was cut."""

    vector: np.ndarray
    tokens: int
    truncated: bool


def text_key(model: str, text: str) -> tuple[str, str]:
    return model, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class EmbeddingCache:
    """An LRU of entries by (model, text); ``get`` counts hits and misses."""

    def __init__(self, max_entries: int = 100_000, max_bytes: int = 256 * 2**20) -> None:
        self._cache: Cache[tuple[str, str], Entry] = Cache(
            max_entries, max_bytes=max_bytes, sizeof=lambda e: int(e.vector.nbytes))
        self.max_entries, self.max_bytes = max_entries, max_bytes

    def get(self, model: str, text: str) -> Entry | None:
        return self._cache.get(text_key(model, text))

    def put(self, model: str, text: str, vector: np.ndarray, tokens: int = 0,
            truncated: bool = False) -> None:
        if self.max_entries == 0 or vector.nbytes > self.max_bytes:
            return  # checked before the copy: a vector that will not be kept is not copied
        stored = np.array(vector, copy=True)
        stored.setflags(write=False)  # callers get this very array back: nobody may change it
        self._cache.put(text_key(model, text), Entry(stored, int(tokens), bool(truncated)))

    def get_many(self, model: str, texts: list[str]) -> list[Entry | None]:
        return self._cache.get_many([text_key(model, text) for text in texts])

    def put_many(self, model: str, texts: list[str], vectors: np.ndarray, tokens: np.ndarray,
                 truncated: np.ndarray) -> None:
        """``put`` of each row of ``vectors``, with one copy of the block: the rows are
        read-only views of it (one copy and one lock a call, where a copy and a lock per text
        cost ~30 us a text, more than a GPU takes to encode it)."""
        if self.max_entries == 0 or not texts:
            return
        block = np.array(vectors, dtype=np.float32, copy=True)
        block.setflags(write=False)
        self._cache.put_many([
            (text_key(model, text), Entry(block[j], int(tokens[j]), bool(truncated[j])))
            for j, text in enumerate(texts)])

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
