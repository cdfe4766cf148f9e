"""The compiled-program cache of an agent: bounded maps, a lock per key, hit/miss counts."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class ProgramCache:
    """Compiled models and programs of one agent (or one process), bounded, with counters.

    One lock guards the maps and is never held while compiling: a compile holds only the
    lock of its own key, so a cache hit, or a compile of another model, never waits
    behind it; two threads that want the same key compile it once.
    """

    def __init__(self, max_programs: int = 64, max_models: int = 64) -> None:
        self.max_programs, self.max_models = max_programs, max_models
        self._maps: dict[str, OrderedDict[Hashable, Any]] = {"models": OrderedDict(),
                                                             "programs": OrderedDict()}
        self._limits = {"models": max_models, "programs": max_programs}
        self._counts = {f"{m}_{k}": 0 for m in self._maps for k in ("hits", "misses")}
        self._building: dict[tuple[str, Hashable], threading.Lock] = {}
        self._lock = threading.Lock()

    @property
    def compiles(self) -> int:
        return self._counts["programs_misses"]

    @property
    def hits(self) -> int:
        return self._counts["programs_hits"]

    def get(self, kind: str, key: Hashable, build: Callable[[], Any]) -> tuple[Any, bool]:
        """(value, built now): the cached value of `key`, or `build()` stored under it."""
        found, key_lock = self._lookup(kind, key)
        if found is not None:
            return found, False
        with key_lock:
            found, _ = self._lookup(kind, key)   # built by the thread this one waited for
            if found is not None:
                return found, False
            try:
                value = build()
            except BaseException:
                with self._lock:
                    self._building.pop((kind, key), None)
                raise
            with self._lock:
                m = self._maps[kind]
                m[key] = value
                self._counts[f"{kind}_misses"] += 1
                while len(m) > self._limits[kind]:
                    m.popitem(last=False)
                self._building.pop((kind, key), None)
            return value, True

    def _lookup(self, kind: str, key: Hashable) -> tuple[Any, threading.Lock]:
        with self._lock:
            m = self._maps[kind]
            if key in m:
                m.move_to_end(key)
                self._counts[f"{kind}_hits"] += 1
                return m[key], None
            return None, self._building.setdefault((kind, key), threading.Lock())

    def info(self) -> dict[str, Any]:
        with self._lock:
            return {"compiles": self.compiles, "hits": self.hits,
                    "programs": len(self._maps["programs"]), "models": len(self._maps["models"]),
                    **self._counts, "max_programs": self.max_programs,
                    "max_models": self.max_models}
