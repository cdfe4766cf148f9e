"""Which agent takes a request: round-robin, least-loaded, consistent hashing.

Every strategy answers the same question, ``order(agents, key)``: the agents in the order to
try them, the first being the choice and the rest the failover path. They are pure bookkeeping
over a list of agents (anything with a ``.name``), so the gateway and ``kiln.embed`` share them
and tests need no cluster.

- ``round_robin``: the next agent each time (the seed's ``state_incr`` counter).
- ``least_loaded``: the agent with the fewest requests in flight: the queue depth each agent
  last reported (a background refresher asks; nothing is asked on a request's path) plus the
  requests this process has sent it since.
- ``consistent_hash``: the text's position on a hash ring of agents with virtual nodes, so the
  same text reaches the same agent (and its cache), and removing one of N agents moves only the
  keys it owned, about 1/N (the seed's ``hash % len(nodes)`` moved nearly all of them).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Protocol, TypeVar

from kiln._caching import Cache
from kiln.errors import SpecError


class Named(Protocol):
    name: str


A = TypeVar("A", bound=Named)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"),
                                          digest_size=8).digest(), "big")


class Router:
    """Base strategy: subclasses give ``order``; ``started``/``finished`` track in-flight work."""

    name = "router"
    per_text = False  # True: each text is routed on its own (key = the text)

    def order(self, agents: Sequence[A], key: str | None = None) -> list[A]:
        raise NotImplementedError

    def started(self, agent: Named) -> None:
        """A request was sent to ``agent``."""

    def finished(self, agent: Named) -> None:
        """A request sent to ``agent`` came back (or failed)."""


class RoundRobin(Router):
    name = "round_robin"

    def __init__(self) -> None:
        self._counter = itertools.count()

    def order(self, agents: Sequence[A], key: str | None = None) -> list[A]:
        if not agents:
            return []
        i = next(self._counter) % len(agents)
        return list(agents[i:]) + list(agents[:i])


class LeastLoaded(Router):
    name = "least_loaded"

    def __init__(self) -> None:
        self.reported: dict[str, int] = {}
        self._local: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._counter = itertools.count()

    def report(self, depths: dict[str, int]) -> None:
        """Queue depths the agents reported (by agent name); replaces the previous report."""
        with self._lock:
            self.reported = dict(depths)

    def load(self, name: str) -> int:
        return self.reported.get(name, 0) + self._local[name]

    def order(self, agents: Sequence[A], key: str | None = None) -> list[A]:
        if not agents:
            return []
        # Ties rotate, so equally idle agents share the work instead of the first taking it all.
        start = next(self._counter) % len(agents)
        with self._lock:
            return sorted(agents, key=lambda a: (self.load(a.name),
                                                 (agents.index(a) - start) % len(agents)))

    def started(self, agent: Named) -> None:
        with self._lock:
            self._local[agent.name] += 1

    def finished(self, agent: Named) -> None:
        with self._lock:
            self._local[agent.name] = max(0, self._local[agent.name] - 1)


class ConsistentHash(Router):
    name = "consistent_hash"
    per_text = True

    def __init__(self, vnodes: int = 160) -> None:
        if vnodes < 1:
            raise SpecError("vnodes", f"must be >= 1, got {vnodes}")
        self.vnodes = vnodes
        # one ring per set of agents seen: the gateway sees a few sets as agents come and go
        self.rings: Cache[tuple[str, ...], tuple[list[int], list[str]]] = Cache(64)

    def ring(self, names: Sequence[str]) -> tuple[list[int], list[str]]:
        """Sorted points and their owners for this set of agents (built once per set)."""
        members = tuple(sorted(set(names)))

        def build() -> tuple[list[int], list[str]]:
            points = sorted((_hash(f"{name}#{v}"), name)
                            for name in members for v in range(self.vnodes))
            return [p for p, _ in points], [n for _, n in points]

        return self.rings.get_or_make(members, build)[0]

    def owners(self, names: Sequence[str], key: str) -> list[str]:
        """All agents, the owner of ``key`` first, then the next distinct ones clockwise."""
        points, owners = self.ring(names)
        if not points:
            return []
        wanted = len(set(names))
        start = bisect.bisect(points, _hash(key)) % len(points)
        out: list[str] = []
        for i in range(len(points)):
            name = owners[(start + i) % len(points)]
            if name not in out:
                out.append(name)
                if len(out) == wanted:
                    break
        return out

    def order(self, agents: Sequence[A], key: str | None = None) -> list[A]:
        by_name = {a.name: a for a in agents}
        return [by_name[n] for n in self.owners(list(by_name), key or "")]


STRATEGIES: dict[str, type[Router]] = {
    RoundRobin.name: RoundRobin, LeastLoaded.name: LeastLoaded, ConsistentHash.name: ConsistentHash,
}


def make_router(strategy: str) -> Router:
    """A new router for ``strategy``; ``SpecError`` naming the known ones otherwise."""
    try:
        return STRATEGIES[strategy]()
    except KeyError:
        raise SpecError("strategy", f"unknown routing strategy {strategy!r}; "
                        f"use one of {', '.join(STRATEGIES)}") from None


def plan(texts: Sequence[str], agents: Sequence[A], router: Router,
         chunk: int | None = None) -> list[tuple[list[int], list[A]]]:
    """Split a request into groups of text positions, each with the agents to try in order.

    A per-text router (consistent hashing) groups texts by the agent that owns them; the others
    send the request whole, or in contiguous chunks of ``chunk`` texts routed one by one.
    """
    n = len(texts)
    if not agents or n == 0:
        return []
    if router.per_text:
        groups: dict[str, tuple[list[int], list[A]]] = {}
        for i, text in enumerate(texts):
            order = router.order(agents, text)
            groups.setdefault(order[0].name, ([], order))[0].append(i)
        return list(groups.values())
    size = n if not chunk or chunk >= n else chunk
    return [(list(range(s, min(n, s + size))), router.order(agents))
            for s in range(0, n, size)]
