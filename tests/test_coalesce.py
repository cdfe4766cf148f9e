"""Concurrent requests for the same agent ride one cluster call, each getting its own answer."""

from __future__ import annotations

import asyncio

import numpy as np

import kiln
from kiln.serve._coalesce import Coalescer


def test_concurrent_requests_share_calls_and_each_gets_its_own_rows(embedded):
    agent = embedded.agents()[0]
    texts = [f"request number {i} about GPUs" for i in range(32)]
    expected = kiln.embed(texts, cache=False)
    coalescer = Coalescer(max_texts=2048, inflight=2)

    async def all_at_once():
        return await asyncio.gather(*(coalescer.encode(agent, [t], "default") for t in texts))

    answers = asyncio.run(all_at_once())
    for i, answer in enumerate(answers):
        assert answer["embeddings"].shape == (1, expected.shape[1])
        np.testing.assert_allclose(answer["embeddings"][0], expected[i], rtol=1e-5, atol=1e-6)
        assert answer["tokens"] > 0 and answer["node"] == "local"
    assert coalescer.requests == 32
    assert coalescer.calls < 32 and coalescer.max_requests_per_call > 1


def test_each_request_gets_its_own_cache_counts(embedded):
    agent = embedded.agents()[0]
    kiln.embed(["seen before"])                       # now in the agent's cache
    coalescer = Coalescer()

    async def two():
        return await asyncio.gather(coalescer.encode(agent, ["seen before"], "default"),
                                    coalescer.encode(agent, ["never seen 7f3a"], "default"))

    seen, fresh = asyncio.run(two())
    assert (seen["cached"], fresh["cached"]) == (1, 0)


def test_a_request_that_gives_up_while_queued_is_never_sent(embedded):
    agent = embedded.agents()[0]
    coalescer = Coalescer(inflight=1)

    async def scenario():
        first = asyncio.ensure_future(coalescer.encode(agent, ["first"] * 300, "default"))
        await asyncio.sleep(0)                         # first is on its way
        second = asyncio.ensure_future(coalescer.encode(agent, ["second"], "default"))
        await asyncio.sleep(0)
        second.cancel()
        await first
        return second

    second = asyncio.run(scenario())
    assert second.cancelled()
    assert coalescer.calls == 1 and coalescer.requests == 1
