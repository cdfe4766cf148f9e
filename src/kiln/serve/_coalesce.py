"""Many clients, one cluster call: requests bound for the same agent ride together.

At 64 concurrent one-text clients the gateway used to make 64 agent calls, each paying a Ray
round trip and its own pass through the agent's batcher: it served about as many requests a
second as one client did. Here every (agent, model) has a lane. A request's texts join the
lane's queue; while fewer than ``inflight`` calls of that lane are in flight, a call leaves
with everything queued (up to ``max_texts``), and when it answers, each waiting request gets
its own rows and counts back. An idle gateway adds no wait: a lone request leaves at once.

One call in flight per lane (``KILN_GATEWAY_COALESCE_INFLIGHT``): every agent call costs the
agent 0.5-0.9 ms of CPU on the 2-core VM whatever it carries, so fewer, fuller calls serve
more. On an H100 with 4 gateway workers, 64 one-text clients got 4,000-5,600 req/s with one
call in flight against 2,800-4,000 with two, and 256 clients 3,200-9,600 against 1,000-2,900
(``bench/results/gateway-inflight-h100.txt``).

A request that gives up (its deadline passed, its client left) leaves the queue if its texts
have not been sent; a call whose every request gave up is cancelled on its agent.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _Waiting:
    texts: list[str]
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


@dataclass
class _Lane:
    agent: Any
    model: str
    cache: bool
    queue: deque = field(default_factory=deque)
    inflight: int = 0


class Coalescer:
    """Merges concurrent embedding requests per (agent, model); see the module docstring."""

    def __init__(self, max_texts: int = 2048, inflight: int = 1) -> None:
        self.max_texts = max_texts
        self.inflight = inflight
        self._lanes: dict[tuple[str, str, bool], _Lane] = {}
        self.calls = 0            # cluster calls made
        self.requests = 0         # requests served through them
        self.max_requests_per_call = 0

    def submit(self, agent: Any, texts: list[str], model: str,
               cache: bool = True) -> asyncio.Future:
        """A future of the agent's answer for ``texts`` alone (rows, counts), from a shared
        call. Cancelling it gives the request up: still queued, its texts are never sent.

        A future, not a coroutine: a task per request (and ``asyncio.shield``'s future) was a
        visible share of the gateway's CPU at 64 clients (py-spy: ``WeakSet.add``)."""
        key = (agent.name, model, cache)
        lane = self._lanes.get(key)
        if lane is None or lane.agent is not agent:
            lane = self._lanes[key] = _Lane(agent, model, cache)
        waiting = _Waiting(list(texts), asyncio.get_running_loop().create_future())
        lane.queue.append(waiting)
        waiting.future.add_done_callback(lambda f: _unqueue(f, lane, waiting))
        self._kick(lane)
        return waiting.future

    async def encode(self, agent: Any, texts: list[str], model: str,
                     cache: bool = True) -> dict[str, Any]:
        """``submit``, awaited (a cancelled caller gives the request up)."""
        return await self.submit(agent, texts, model, cache)

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls, "requests": self.requests,
                "max_requests_per_call": self.max_requests_per_call,
                "queued": sum(len(lane.queue) for lane in self._lanes.values())}

    def _kick(self, lane: _Lane) -> None:
        while lane.queue and lane.inflight < self.inflight:
            batch: list[_Waiting] = []
            size = 0
            while lane.queue and (not batch or size + len(lane.queue[0].texts) <= self.max_texts):
                item = lane.queue.popleft()
                if item.future.done():
                    continue  # its request gave up while queued
                batch.append(item)
                size += len(item.texts)
            if not batch:
                continue
            lane.inflight += 1
            asyncio.get_running_loop().create_task(self._send(lane, batch))

    async def _send(self, lane: _Lane, batch: list[_Waiting]) -> None:
        texts = [t for item in batch for t in item.texts]
        payload = {"texts": texts, "model": lane.model, "cache": lane.cache, "per_text": True}
        call = None
        sent = time.perf_counter()
        try:
            call = lane.agent.submit("embed", "encode", payload)
            watcher = asyncio.ensure_future(_answer(call))
            while not watcher.done():
                await asyncio.wait([watcher], timeout=0.5)
                if all(item.future.done() for item in batch) and not watcher.done():
                    call.cancel()  # every client gave up: free the agent
                    watcher.cancel()
                    return
            answer = watcher.result()
        except BaseException as err:  # noqa: BLE001 - each waiting request gets the error
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(err)
            if isinstance(err, asyncio.CancelledError) and call is not None:
                call.cancel()
            return
        finally:
            lane.inflight -= 1
            self._kick(lane)
        self.calls += 1
        self.requests += len(batch)
        self.max_requests_per_call = max(self.max_requests_per_call, len(batch))
        _hand_out(answer, batch, sent, time.perf_counter())


def _unqueue(future: asyncio.Future, lane: _Lane, waiting: _Waiting) -> None:
    if future.cancelled() and waiting in lane.queue:
        lane.queue.remove(waiting)  # never sent: nobody encodes it


async def _answer(call: Any) -> Any:
    return await call


def _hand_out(answer: dict[str, Any], batch: list[_Waiting], sent: float,
              answered: float) -> None:
    """Each request's rows and its own counts, out of one answer for all of them, with how
    long it waited in the queue (``queue_s``) and the call took (``call_s``): the gateway's
    Server-Timing."""
    rows = np.asarray(answer["embeddings"])
    per = answer.get("per_text") or {}
    cached = np.asarray(per.get("cached", np.zeros(len(rows), bool)))
    tokens = np.asarray(per.get("tokens", np.zeros(len(rows), np.int64)))
    truncated = np.asarray(per.get("truncated", np.zeros(len(rows), bool)))
    start = 0
    for item in batch:
        end = start + len(item.texts)
        if not item.future.done():
            item.future.set_result({
                **{k: v for k, v in answer.items() if k not in ("embeddings", "per_text")},
                "embeddings": rows[start:end], "cached": int(cached[start:end].sum()),
                "tokens": int(tokens[start:end].sum()),
                "truncated": int(truncated[start:end].sum()),
                "queue_s": sent - item.queued, "call_s": answered - sent})
        start = end


__all__ = ["Coalescer"]
