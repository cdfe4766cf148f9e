"""What a slow request may have waited for: garbage collections (kiln._gc.watch) and a blocked
event loop (serve/_lag.py), measured by what a caller sees, on real collections and a real loop."""

from __future__ import annotations

import asyncio
import gc
import time

from kiln._gc import _pauses, pauses, watch
from kiln.serve._lag import LoopLag


def test_a_full_collection_is_counted_with_the_pause_the_caller_saw():
    watch()
    watch()  # once per process, however often it is asked
    assert sum(cb is _pauses for cb in gc.callbacks) == 1
    keep = [[i] for i in range(300_000)]  # tracked objects, so the collection takes a while
    before = pauses()
    began = time.perf_counter()
    gc.collect()
    wall = time.perf_counter() - began
    after = pauses()
    assert after["collections"][2] == before["collections"][2] + 1
    paused = after["seconds"][2] - before["seconds"][2]
    assert 0.5 * wall <= paused <= wall + 1e-3, (paused, wall)
    assert after["longest_ms"][2] >= paused * 1000 * 0.99
    del keep


def test_a_blocked_event_loop_is_counted_by_how_long_it_was_blocked():
    lag = LoopLag(every_s=0.01)

    async def main() -> None:
        task = asyncio.create_task(lag.run())
        await asyncio.sleep(0.1)
        time.sleep(0.12)  # what a synchronous call on the loop does to every request
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(main())
    got = lag.report()
    assert got["late_over_ms"]["100"] == 1 and got["late_over_ms"]["250"] == 0
    assert 100 <= got["longest_ms"] < 250
    assert got["ticks"] >= 10
    assert got["late_s"] >= 0.1
