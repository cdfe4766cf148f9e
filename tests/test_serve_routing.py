"""Routing strategies as pure bookkeeping over agents (no cluster needed)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from kiln._routing import ConsistentHash, LeastLoaded, RoundRobin, make_router, plan
from kiln.errors import SpecError


@dataclass(frozen=True)
class A:
    name: str


AGENTS = [A("kiln-agent:n1:cpu"), A("kiln-agent:n2:cpu"), A("kiln-agent:n3:cpu")]
KEYS = [f"text number {i}" for i in range(300)]


def test_round_robin_takes_each_agent_in_turn():
    rr = RoundRobin()
    firsts = [rr.order(AGENTS)[0].name for _ in range(6)]
    assert firsts == [a.name for a in AGENTS] * 2


def test_every_order_lists_every_agent_once_for_failover():
    for router in (RoundRobin(), LeastLoaded(), ConsistentHash()):
        order = router.order(AGENTS, "some text")
        assert sorted(a.name for a in order) == sorted(a.name for a in AGENTS)


def test_least_loaded_picks_the_shortest_reported_queue():
    ll = LeastLoaded()
    ll.report({"kiln-agent:n1:cpu": 5, "kiln-agent:n2:cpu": 0, "kiln-agent:n3:cpu": 2})
    assert [a.name for a in ll.order(AGENTS)] == [
        "kiln-agent:n2:cpu", "kiln-agent:n3:cpu", "kiln-agent:n1:cpu"]


def test_least_loaded_counts_its_own_requests_between_reports():
    ll = LeastLoaded()
    ll.report({a.name: 0 for a in AGENTS})
    first = ll.order(AGENTS)[0]
    ll.started(first)
    ll.started(first)
    assert ll.order(AGENTS)[0] != first
    ll.finished(first)
    ll.finished(first)
    assert ll.load(first.name) == 0


def test_least_loaded_spreads_ties():
    ll = LeastLoaded()
    assert len({ll.order(AGENTS)[0].name for _ in range(3)}) == 3


def test_consistent_hash_sends_a_text_to_the_same_agent():
    ch = ConsistentHash()
    assert {ch.order(AGENTS, "hello")[0].name for _ in range(10)} == {ch.order(AGENTS, "hello")[0].name}
    assert ConsistentHash().order(list(reversed(AGENTS)), "hello")[0] == ch.order(AGENTS, "hello")[0]


def test_consistent_hash_spreads_keys_over_agents():
    ch = ConsistentHash()
    counts = Counter(ch.order(AGENTS, k)[0].name for k in KEYS)
    assert len(counts) == 3 and min(counts.values()) >= 50


def test_removing_one_of_three_agents_remaps_about_a_third_of_the_keys():
    ch = ConsistentHash()
    before = {k: ch.order(AGENTS, k)[0].name for k in KEYS}
    after = {k: ch.order(AGENTS[:2], k)[0].name for k in KEYS}
    moved = sum(before[k] != after[k] for k in KEYS) / len(KEYS)
    assert 0.20 <= moved <= 0.45
    # only the removed agent's keys move; everyone else's stay put
    assert all(after[k] == before[k] for k in KEYS if before[k] != AGENTS[2].name)


def test_plan_groups_texts_by_owner_under_consistent_hashing():
    ch = ConsistentHash()
    groups = plan(KEYS[:30], AGENTS, ch)
    assert sorted(i for idx, _ in groups for i in idx) == list(range(30))
    for idx, order in groups:
        assert all(ch.order(AGENTS, KEYS[i])[0] == order[0] for i in idx)


def test_plan_chunks_contiguously_for_other_strategies():
    groups = plan(KEYS[:10], AGENTS, RoundRobin(), chunk=4)
    assert [idx for idx, _ in groups] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [order[0].name for _, order in groups] == [a.name for a in AGENTS]


def test_unknown_strategy_is_refused_naming_the_known_ones():
    with pytest.raises(SpecError, match="least_loaded"):
        make_router("fastest")


def test_consistent_hash_builds_a_ring_once_per_set_of_agents_and_keeps_at_most_64():
    ch = ConsistentHash(vnodes=2)
    ch.order(AGENTS, "a")
    ch.order(list(reversed(AGENTS)), "b")  # the same set, in another order: the same ring
    assert (ch.rings.misses, ch.rings.hits) == (1, 1)
    for i in range(100):
        ch.order([A(f"agent-{i}")], "a")
    assert len(ch.rings) == 64 and ch.rings.stats().evictions == 101 - 64
