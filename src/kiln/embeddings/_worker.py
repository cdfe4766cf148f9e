"""The embed capability inside an agent: loaded encoders, the cache and the batcher.

The agent runs ``encode(state, payload, ctx)`` in its thread pool (see docs/internals.md);
``State`` lives as long as the agent, so a model is loaded once and its cache stays warm.
Its settings are the ``KILN_EMBED_*`` variables of the agent's environment
(``kiln.connect(agent_env=...)``), read when the agent starts; ``kiln._settings`` documents them.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

from kiln._gc import settle
from kiln._protocol import AgentContext, Context, Payload, Reply
from kiln._settings import settings
from kiln.embeddings._batcher import Batcher
from kiln.embeddings._cache import EmbeddingCache, Key, text_keys
from kiln.embeddings._encoder import Encoder
from kiln.embeddings._models import resolve
from kiln.errors import EmbedInputError

OPS = ("encode",)  # the jobs an agent may run (kiln._protocol)


class State:
    """Per-agent embedding state: encoders by model directory, one cache, one batcher."""

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.device = ctx.device
        gpu = self.device.startswith("cuda")
        env = settings()
        self.dtype = env.embed_dtype
        self.cache = EmbeddingCache(max_entries=env.embed_cache_entries,
                                    max_bytes=env.embed_cache_bytes)
        # A bulk call is a scan: storing its texts would evict the ones that repeat (the
        # gateway's), and storing costs ~2-6 us a text of Python under the GIL, which the GPU
        # pass waits for; so, as databases read a large scan through a small ring instead of
        # their buffer pool, a call with many new texts reads the cache but is not stored.
        self.cache_admit = env.embed_cache_admit_texts
        # A GPU pass over 64k padded tokens of MiniLM takes a few ms and little memory; on a
        # CPU a smaller pass keeps one request's latency from growing with the others' load.
        self.batcher = Batcher(
            token_budget=env.embed_token_budget or (65_536 if gpu else 8_192),
            max_wait_s=env.embed_max_wait_ms / 1000)
        if not gpu:
            _use_the_cores(env.embed_threads)
        self.encoders: dict[str, Encoder] = {}
        self._names: dict[str, str] = {}
        self._lock = threading.Lock()
        self.requests = 0

    def encoder(self, name: str) -> Encoder:
        """The loaded encoder for model ``name`` (resolved offline; loaded on first use)."""
        path = self._names.get(name)
        if path is not None:
            return self.encoders[path]
        spec = resolve(name)
        with self._lock:
            if spec.path not in self.encoders:
                self.encoders[spec.path] = Encoder(spec, self.device, self.dtype)
                settle()  # a model's objects out of later full collections (kiln._gc)
            self._names[name] = spec.path
            return self.encoders[spec.path]


def warm(state: State) -> None:
    """An agent started with ``KILN_AGENT_PRELOAD=embed``: load the default model now."""
    state.encoder("default")


def _use_the_cores(threads: int | None) -> None:
    """Let torch use the node's cores: Ray starts actors with OMP_NUM_THREADS=1, which left a
    CPU agent at half the throughput of sentence-transformers run by hand on a 2-core machine."""
    import torch

    threads = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else (os.cpu_count() or 1))
    if torch.get_num_threads() < threads:
        torch.set_num_threads(threads)


def _validate(payload: Any) -> tuple[list[str], str, bool]:
    if not isinstance(payload, dict):
        raise EmbedInputError(f"payload: expected a dict with 'texts', got {type(payload).__name__}")
    texts = payload.get("texts")
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise EmbedInputError(f"texts: expected a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise EmbedInputError(f"texts[{i}]: expected a string, got {type(text).__name__}")
    model = payload.get("model", "default")
    return list(texts), model, bool(payload.get("cache", True))


def encode(state: State, payload: Payload, ctx: Context) -> Reply:
    """``{"texts": [...], "model": "default"}`` -> embeddings (float32, input order) and counts.

    Cached texts are served from the cache (the very vector computed the first time); the
    others are encoded in one batch, merged with concurrent requests by the batcher.
    """
    began = time.perf_counter()
    texts, model, use_cache = _validate(payload)
    enc = state.encoder(model)
    key = enc.spec.path  # aliases and paths of the same model share cache entries
    n = len(texts)
    vectors = np.empty((n, enc.dim), dtype=np.float32)
    tokens = np.zeros(n, dtype=np.int64)
    cut = np.zeros(n, dtype=bool)
    positions: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        positions.setdefault(text, []).append(i)
    hit = np.zeros(n, dtype=bool)
    unique = list(positions)
    keys = text_keys(key, unique) if use_cache else []
    found = state.cache.get_many(keys) if use_cache else [None] * len(unique)
    missing: list[str] = []
    missing_keys: list[Key] = []
    hits: list[tuple[int, Any]] = []  # (row, entry), put in place together below
    for j, (text, entry) in enumerate(zip(unique, found, strict=True)):
        if entry is None:
            missing.append(text)
            if use_cache:
                missing_keys.append(keys[j])
            continue
        hits.extend((i, entry) for i in positions[text])
    if hits:
        # one numpy assignment per column, not four per text: a cached text cost 5.5 us in
        # this function on the 2-core VM, now 2.2-3.2
        at = [i for i, _ in hits]
        vectors[at] = np.stack([e.vector for _, e in hits])
        tokens[at] = [e.tokens for _, e in hits]
        cut[at] = [e.truncated for _, e in hits]
        hit[at] = True
    if missing:
        fresh = state.batcher.encode(enc, missing, cancelled=ctx.cancelled)
        rows = [positions[text] for text in missing]
        if all(len(where) == 1 for where in rows):  # the usual case: no text twice in a call
            flat = [where[0] for where in rows]
            vectors[flat], tokens[flat], cut[flat] = fresh.vectors, fresh.tokens, fresh.truncated
        else:
            for j, where in enumerate(rows):
                vectors[where] = fresh.vectors[j]
                tokens[where], cut[where] = fresh.tokens[j], fresh.truncated[j]
        if use_cache and len(missing) <= state.cache_admit:
            state.cache.put_many(missing_keys, fresh.vectors, fresh.tokens, fresh.truncated)
    state.requests += 1
    out = {"embeddings": vectors, "cached": int(hit.sum()), "truncated": int(cut.sum()),
           "tokens": int(tokens.sum()), "node": ctx.node,
           "device": ctx.device, "model": model, "dim": enc.dim,
           # the job's own time in the agent (the gateway's Server-Timing "agent")
           "seconds": time.perf_counter() - began}
    if payload.get("per_text"):
        # one call carrying many clients' texts (the gateway's coalescer): each client's counts
        out["per_text"] = {"cached": hit, "tokens": tokens, "truncated": cut}
    return out


def info(state: State) -> dict[str, Any]:
    """Models loaded, their dimensions, the device and its memory, cache and queue figures."""
    encoders = list(state.encoders.values())
    return {
        "models_loaded": sorted(state._names),
        "models": {name: state.encoders[path].describe() for name, path in state._names.items()},
        "dims": {name: state.encoders[path].dim for name, path in state._names.items()},
        "device": state.device,
        "dtype": encoders[0].dtype if encoders else None,
        "memory": _memory(state.device),
        "cache": state.cache.stats()._asdict(),
        "queue_depth": state.ctx.inflight("embed"),
        "batcher": state.batcher.stats(),
        "requests": state.requests,
    }


def _memory(device: str) -> dict[str, Any]:
    import psutil

    out: dict[str, Any] = {"process_rss_bytes": psutil.Process().memory_info().rss}
    if device.startswith("cuda"):
        try:
            import torch

            index = int(device.split(":", 1)[1]) if ":" in device else 0
            out["gpu_allocated_bytes"] = torch.cuda.memory_allocated(index)
            out["gpu_reserved_bytes"] = torch.cuda.memory_reserved(index)
            out["gpu_total_bytes"] = torch.cuda.get_device_properties(index).total_memory
        except Exception as err:  # noqa: BLE001 - a GPU in a bad state must not stop the
            # agent's report: it says what went wrong instead of the figures
            out["gpu_error"] = f"{type(err).__name__}: {err}"
    return out
