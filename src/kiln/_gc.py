"""Full garbage collections, which pause a server for a tenth of a second or more.

A loaded agent holds ~500k objects the collector tracks (torch, transformers, the model's
modules), and a gateway worker with its fallback model about as many; a full collection walks
them all: 291 ms in an agent on the 2-core VM. Python runs one after enough allocations, at a
moment no request chooses, and meanwhile the event loop or the agent's threads wait. What is
alive once a server has loaded its models lives as long as the process, so, as vLLM does after
capturing its CUDA graphs, it is collected once and moved to the permanent generation
(``gc.freeze``): later collections walk only what came after (0.0 ms for the same agent).

``watch`` counts every collection and its pause, so that a server's report says whether
collections are what its slow requests waited for (agents' ``info``, the gateway's /cluster).
"""

from __future__ import annotations

import gc
import time
from typing import Any

# Pauses at or over these many milliseconds are counted apart: a tail latency of ~300 ms is
# found here or not at all.
PAUSE_MS = (10, 50, 100, 250)


def settle() -> float:
    """Collect, then freeze what is left out of later collections; the seconds it took."""
    began = time.perf_counter()
    gc.collect()
    gc.freeze()
    # counted here, not in every report: gc.get_freeze_count() walks the frozen objects (in
    # an H100 agent's py-spy, 45% of its samples while /cluster was asked 10 times a second)
    _pauses.frozen = gc.get_freeze_count()
    return time.perf_counter() - began


class _Pauses:
    """Collections by generation and their pauses, from ``gc.callbacks``. A collection holds
    the GIL from its start to its stop, so the callbacks pair up and need no lock of their own;
    they run at every collection (hundreds a second in a busy server), so they do little."""

    def __init__(self) -> None:
        self.began = 0.0
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest_ms = [0.0, 0.0, 0.0]
        self.over = dict.fromkeys(PAUSE_MS, 0)
        self.frozen = 0  # objects frozen by the last settle

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.began = time.perf_counter()
            return
        ms = (time.perf_counter() - self.began) * 1000
        g = info["generation"]
        self.count[g] += 1
        self.seconds[g] += ms / 1000
        if ms > self.longest_ms[g]:
            self.longest_ms[g] = ms
        if ms >= PAUSE_MS[0]:
            for limit in PAUSE_MS:
                self.over[limit] += ms >= limit

    def report(self) -> dict[str, Any]:
        return {"collections": list(self.count),
                "seconds": [round(s, 4) for s in self.seconds],
                "longest_ms": [round(ms, 2) for ms in self.longest_ms],
                "pauses_over_ms": {str(ms): n for ms, n in self.over.items()},
                "frozen": self.frozen}


_pauses = _Pauses()


def watch() -> None:
    """Count this process's collections and their pauses from now on (once per process)."""
    if _pauses not in gc.callbacks:
        gc.callbacks.append(_pauses)


def pauses() -> dict[str, Any]:
    """Collections so far by generation (0, 1, 2: the last are full ones), the seconds they
    took, the longest pause, how many paused at least each of ``PAUSE_MS``, and how many objects
    the last ``settle`` froze; all counts since ``watch``."""
    return _pauses.report()
