"""``kiln.embed``: texts in, a numpy array out, encoded on the cluster's agents.

The texts are split by the routing strategy (``kiln._routing``), sent to agents in
parallel, and put back in input order. An agent that dies or runs past ``timeout`` gives its
texts to the next agent in the strategy's order (at most ``retries`` times); errors in the
request itself (bad texts, a model that is not on the node) are raised at once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from kiln import _jobs
from kiln._routing import Router, make_router, plan
from kiln.errors import (
    BoundaryError,
    EmbedError,
    EmbedInputError,
    NoAgentsError,
    SpecError,
)

_FATAL = (EmbedError, BoundaryError, SpecError)
# Texts per agent call. Measured on an H200 (bench/results/embed-h200.json), 50k texts: 512 a
# call gave 22.7k texts/s, 2048 gave 65.8k (8x raw sentence-transformers), 8192 61.5k. A CPU
# agent encodes ~400 texts/s, so smaller calls spread a batch over more nodes sooner.
GPU_CHUNK = 2048
CPU_CHUNK = 512
_routers: dict[str, Router] = {}
_routers_lock = threading.Lock()


def is_retryable(err: BaseException) -> bool:
    """Whether another agent might succeed where this one failed (not a bad request)."""
    return isinstance(err, Exception) and not isinstance(err, _FATAL)


def check_texts(texts: object, field: str = "texts") -> list[str]:
    """``texts`` as a list of strings; ``EmbedInputError`` naming the bad item otherwise."""
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, Sequence) and not isinstance(texts, np.ndarray):
        raise EmbedInputError(f"{field}: expected a string or a list of strings, "
                              f"got {type(texts).__name__}")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise EmbedInputError(f"{field}[{i}]: expected a string, got {type(text).__name__}")
    return out


def router_for(strategy: str | None) -> Router:
    """This process's router for ``strategy`` (kept, so round-robin keeps turning)."""
    name = strategy or "round_robin"
    with _routers_lock:
        if name not in _routers:
            _routers[name] = make_router(name)
        return _routers[name]


def embed(texts: str | Sequence[str], model: str = "default", strategy: str | None = None, *,
          on: str | Sequence[str] | None = None, timeout: float = 120.0, retries: int = 2,
          chunk: int | None = None, cache: bool = True) -> np.ndarray:
    """Embed ``texts`` on the cluster; float32 array ``(len(texts), dim)`` in input order.

    ``strategy``: ``round_robin`` (default), ``least_loaded`` or ``consistent_hash`` (each text
    to the agent that owns it, for cache locality). ``on`` limits the agents to those nodes.
    Requests longer than ``chunk`` texts are split and encoded on several agents at once
    (default: 2048 texts a call when a GPU agent takes part, else 512).
    ``cache``: each agent answers the texts it has already encoded from its cache; an agent
    call of more new texts than ``KILN_EMBED_CACHE_ADMIT_TEXTS`` (1024) reads the cache but
    does not store them (a bulk scan would evict the texts that repeat).
    """
    items = check_texts(texts)
    router = router_for(strategy)
    from kiln import cluster as _cluster  # here, not at import: an encoder needs no Ray

    c = _cluster.current()
    agents = c.agents(on)
    if not agents:
        raise NoAgentsError("kiln.embed: no ready agent in the cluster (Cluster.status() says why)")
    if chunk is None:
        chunk = GPU_CHUNK if any(a.device.startswith("cuda") for a in agents) else CPU_CHUNK
    elif isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise SpecError("chunk", f"a positive number of texts per call, got {chunk!r}")
    groups = plan(items, agents, router, chunk) or [([], router.order(agents))]
    jobs = [_jobs.Job("embed", "encode",
                      {"texts": [items[i] for i in indices], "model": model, "cache": cache},
                      f"texts {indices[0]}-{indices[-1]}" if indices else "no texts",
                      agents=order)
            for indices, order in groups]
    policy = _jobs.Policy(on=on, timeout=timeout, retries=retries, retryable=is_retryable,
                          on_start=lambda i, h: router.started(h),
                          on_end=lambda i, h: router.finished(h), what="kiln.embed")
    results = _jobs.run(jobs, policy)
    return _assemble(len(items), groups, results)


def _assemble(n: int, groups: list, results: list) -> np.ndarray:
    dim = next(r["embeddings"].shape[1] for r in results if r is not None)
    out = np.empty((n, dim), dtype=np.float32)
    for (indices, _), result in zip(groups, results, strict=True):
        if indices:
            out[indices] = result["embeddings"]
    return out
