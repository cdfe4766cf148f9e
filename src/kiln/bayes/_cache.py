"""The compiled-program cache of an agent: two bounded caches (models, programs) with counts.

Both are ``kiln._caching.Cache``: a lock guards each map and is never held while compiling; a
compile holds only the lock of its own key, so a cache hit, or a compile of another model,
never waits behind it, and two threads that want the same key compile it once.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from kiln._caching import Cache


class ProgramCache:
    """Compiled models and programs of one agent (or one process), bounded, with counters."""

    def __init__(self, max_programs: int = 64, max_models: int = 64) -> None:
        self.max_programs, self.max_models = max_programs, max_models
        self._caches: dict[str, Cache[Hashable, Any]] = {
            "models": Cache(max_models), "programs": Cache(max_programs)}

    @property
    def compiles(self) -> int:
        return self._caches["programs"].misses

    @property
    def hits(self) -> int:
        return self._caches["programs"].hits

    def get(self, kind: str, key: Hashable, build: Callable[[], Any]) -> tuple[Any, bool]:
        """(value, built now): the cached value of `key`, or `build()` stored under it."""
        return self._caches[kind].get_or_make(key, build)

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"compiles": self.compiles, "hits": self.hits,
                               "max_programs": self.max_programs, "max_models": self.max_models}
        for kind, cache in self._caches.items():
            stats = cache.stats()
            out.update({kind: stats.entries, f"{kind}_hits": stats.hits,
                        f"{kind}_misses": stats.misses, f"{kind}_evictions": stats.evictions})
        return out
