"""How late a gateway worker's event loop runs what is due: its stalls, whatever their cause.

Every request of a worker waits while its loop is blocked (a full garbage collection, a call
that should have been in a thread, a burst of callbacks). A timer due every ``every_s`` that
runs late by L seconds says the loop was blocked for about L; the lateness is counted in
buckets, so a tail latency of ~300 ms shows here, or is not the loop's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

LAG_MS = (10, 50, 100, 250)


class LoopLag:
    """Counts of late timers by how late (``LAG_MS``), the longest, and the seconds lost."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s = every_s
        self.ticks = 0
        self.late_s = 0.0
        self.longest_ms = 0.0
        self.over = dict.fromkeys(LAG_MS, 0)

    async def run(self) -> None:
        while True:
            due = time.perf_counter() + self.every_s
            await asyncio.sleep(self.every_s)
            self.note(time.perf_counter() - due)

    def note(self, late: float) -> None:
        late = max(0.0, late)
        self.ticks += 1
        self.late_s += late
        self.longest_ms = max(self.longest_ms, late * 1000)
        for ms in LAG_MS:
            self.over[ms] += late * 1000 >= ms

    def report(self) -> dict[str, Any]:
        return {"every_ms": round(self.every_s * 1000, 1), "ticks": self.ticks,
                "late_s": round(self.late_s, 3), "longest_ms": round(self.longest_ms, 1),
                "late_over_ms": {str(ms): n for ms, n in self.over.items()}}
