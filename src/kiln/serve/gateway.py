"""The gateway's engine: route texts to agents, fail over, fall back to a local encoder.

It is the seed's ``resilient_inference`` made whole: the routing strategy gives each group of
texts an order of agents; a group whose agent dies (``AgentLostError``), errs, or runs past
``timeout`` moves to the next agent, at most ``retries`` times; when no agent is ready, or all
of them failed, the texts are encoded in the gateway process itself (``fallback``), and only
when that is off or fails too does the request fail (503 with the reasons).

A background refresher (one thread hop per ``refresh_s``) keeps the list of ready agents and
their reported queue depths, so no request waits on a remote call that is not its own work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from kiln.embed.api import is_retryable
from kiln.errors import AgentLostError, GatewayError
from kiln.serve.metrics import Metrics
from kiln.serve.routing import STRATEGIES, Router, make_router, plan

log = logging.getLogger("kiln.serve")


@dataclass(frozen=True)
class Limits:
    """What one request may ask; beyond it the gateway answers 413 (or 503 when full)."""

    max_texts: int = 2048             # texts per request
    max_chars: int = 100_000          # characters per text
    max_body_bytes: int = 8 * 2**20   # request body
    max_inflight: int = 256           # requests served at once; more -> 503 + Retry-After


class Unavailable(GatewayError):
    """No agent could answer and the local fallback is off or failed too."""


class QueueFull(GatewayError):
    """Too many requests in flight."""


class Outcome(NamedTuple):
    embeddings: np.ndarray
    nodes: list[str]
    cached: int
    truncated: int
    tokens: int
    fallback: bool


class Gateway:
    """Routing, failover and fallback for one app; see the module docstring."""

    def __init__(self, cluster: Any, *, strategy: str = "round_robin", metrics: Metrics,
                 timeout: float = 30.0, retries: int = 2, fallback: bool = True,
                 refresh_s: float = 1.0, limits: Limits | None = None) -> None:
        make_router(strategy)  # an unknown strategy fails here, before the server starts
        self.cluster = cluster
        self.strategy = strategy
        self.metrics = metrics
        self.timeout = timeout
        self.retries = retries
        self.fallback = fallback
        self.refresh_s = refresh_s
        self.limits = limits or Limits()
        self.routers: dict[str, Router] = {name: make_router(name) for name in STRATEGIES}
        self.agents: list[Any] = []
        self.node_name = "gateway@" + (socket.gethostname().split(".")[0] or "local")
        self.started = time.time()
        self.inflight = 0
        self._lost: set[str] = set()
        self._local_state: Any = None
        self._local_lock = threading.Lock()
        self._task: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self.refresh)
        if self.cluster is not None:
            self._task = asyncio.create_task(self._refresh_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as err:  # the cluster is changing under us; the next tick retries
                log.warning("kiln serve: refreshing agents failed: %s", err)

    def refresh(self) -> None:
        """Ready agents and their queue depths (runs in a worker thread)."""
        if self.cluster is None:
            self.agents = []
            self.metrics.agents_ready.set(0)
            return
        self.cluster.refresh()
        agents = self.cluster.agents()
        depths = {}
        for h in agents:
            try:
                depths[h.name] = int((h.info(timeout=2).get("inflight") or {}).get("embed", 0))
            except Exception:  # a busy or dying agent: leave it to the request path to find out
                continue
        self.routers["least_loaded"].report(depths)
        self._lost &= {h.name for h in agents}
        self.agents = [h for h in agents if h.name not in self._lost]
        self.metrics.agents_ready.set(len(self.agents))

    def _mark_lost(self, agent: Any) -> None:
        self._lost.add(agent.name)
        self.agents = [h for h in self.agents if h.name != agent.name]
        self.metrics.agents_ready.set(len(self.agents))
        if self.cluster is not None:
            self.cluster.mark_lost(agent)

    # -- requests ------------------------------------------------------------------------------
    def admit(self) -> None:
        if self.inflight >= self.limits.max_inflight:
            raise QueueFull(f"{self.inflight} requests in flight (limit {self.limits.max_inflight})")

    async def encode(self, texts: list[str], model: str, strategy: str | None = None,
                     parallel: bool = False) -> Outcome:
        """Embeddings for ``texts`` in input order, from agents or, failing that, locally."""
        router = self.routers[strategy or self.strategy]
        agents = list(self.agents)
        if not agents:
            return await self._fallback(texts, model, "no agent is ready")
        if parallel:
            groups = _split(len(texts), agents)
        else:
            groups = plan(texts, agents, router)
        answers = await asyncio.gather(*(self._group(texts, idx, order, model, router)
                                         for idx, order in groups))
        dim = next((a["embeddings"].shape[1] for a in answers if isinstance(a, dict)), None)
        failed = [(idx, why) for (idx, _), why in zip(groups, answers, strict=True)
                  if isinstance(why, str)]
        local = None
        if failed:
            rest = [i for idx, _ in failed for i in idx]
            reasons = "; ".join(sorted({why for _, why in failed}))
            local = await self._fallback([texts[i] for i in rest], model, reasons)
            dim = local.embeddings.shape[1]
        out = np.empty((len(texts), dim), dtype=np.float32)
        nodes: list[str] = []
        cached = truncated = tokens = 0
        for (idx, _), answer in zip(groups, answers, strict=True):
            if isinstance(answer, dict):
                out[idx] = answer["embeddings"]
                cached += answer["cached"]
                truncated += answer["truncated"]
                tokens += answer["tokens"]
                if answer["node"] not in nodes:
                    nodes.append(answer["node"])
        if local is not None:
            out[rest] = local.embeddings
            truncated += local.truncated
            tokens += local.tokens
            nodes.append(self.node_name)
        if len(failed) < len(groups):
            self.metrics.distributed.inc()
        self.metrics.cache_hits.inc(cached)
        self.metrics.cache_misses.inc(len(texts) - cached)
        return Outcome(out, nodes, cached, truncated, tokens, local is not None)

    async def _group(self, texts: list[str], idx: list[int], order: list[Any], model: str,
                     router: Router) -> dict[str, Any] | str:
        """One group's answer from the first agent that gives one, or why none did."""
        payload = {"texts": [texts[i] for i in idx], "model": model}
        why = "no agent answered"
        tried = 0
        for agent in order:
            if tried > self.retries:
                break
            if agent.name in self._lost:
                continue
            if tried:
                self.metrics.failovers.labels(reason=why.split(":")[0]).inc()
            tried += 1
            router.started(agent)
            started = time.perf_counter()
            call = agent.submit("embed", "encode", payload)
            try:
                answer = await asyncio.wait_for(_awaited(call), self.timeout)
            except TimeoutError:  # asyncio's, or CallTimeoutError from the agent's side
                call.cancel()
                why = f"timeout: {agent.name} ran past {self.timeout} s"
                continue
            except AgentLostError as err:
                self._mark_lost(agent)
                why = f"agent_lost: {err}"
                continue
            except Exception as err:
                if not is_retryable(err):
                    raise
                why = f"agent_error: {agent.name}: {type(err).__name__}: {str(err)[:200]}"
                continue
            finally:
                router.finished(agent)
            self.metrics.node_requests.labels(node=answer["node"] or agent.name).inc()
            self.metrics.agent_latency.labels(node=answer["node"] or agent.name).observe(
                time.perf_counter() - started)
            return answer
        return why

    async def _fallback(self, texts: list[str], model: str, why: str) -> Outcome:
        if not self.fallback:
            raise Unavailable(f"no agent could encode the texts ({why}) and the local fallback "
                              "is off (start the gateway with fallback=True, or add agents)")
        self.metrics.local_fallback.inc()
        try:
            answer = await asyncio.to_thread(self._local_encode, texts, model)
        except Exception as err:
            if not is_retryable(err):
                raise
            raise Unavailable(f"no agent could encode the texts ({why}) and the local fallback "
                              f"failed: {type(err).__name__}: {err}") from err
        return Outcome(answer["embeddings"], [self.node_name], answer["cached"],
                       answer["truncated"], answer["tokens"], True)

    def _local_encode(self, texts: list[str], model: str) -> dict[str, Any]:
        from kiln.agent import AgentContext
        from kiln.embed import worker

        with self._local_lock:
            if self._local_state is None:
                ctx = AgentContext(self.node_name, self.node_name, "cpu")
                self._local_state = (worker.State(ctx), ctx)
        state, ctx = self._local_state
        return worker.encode(state, {"texts": texts, "model": model}, ctx)

    # -- status -----------------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        """This gateway, every agent online or offline with its info, and totals."""
        records = await asyncio.to_thread(self._records)
        ready = [r for r in records if r["handle"] is not None]
        infos = await asyncio.gather(*(asyncio.to_thread(r["handle"].info, 5) for r in ready),
                                     return_exceptions=True)
        by_name = {r["name"]: i for r, i in zip(ready, infos, strict=True)}
        agents = []
        for r in records:
            info = by_name.get(r["name"])
            if isinstance(info, dict):
                agents.append(_online(r, info))
            else:
                error = r["reason"] or (f"{type(info).__name__}: {info}" if info else r["state"])
                agents.append({"name": r["name"], "node": r["node"], "device": r["device"],
                               "status": "offline", "error": error})
        online = [a for a in agents if a["status"] == "online"]
        local = self._local_state[0] if self._local_state else None
        return {
            "gateway": {
                "node": self.node_name, "pid": os.getpid(), "strategy": self.strategy,
                "address": getattr(self.cluster, "address", None),
                "attached": self.cluster is not None, "fallback": self.fallback,
                "fallback_loaded": local is not None, "uptime_s": round(time.time() - self.started, 1),
                "inflight": self.inflight, "timeout_s": self.timeout, "retries": self.retries,
                "limits": self.limits.__dict__,
            },
            "agents": agents,
            "totals": {
                "agents": len(agents), "online": len(online), "offline": len(agents) - len(online),
                "nodes": len({a["node"] for a in online}),
                "queue_depth": sum(a["queue_depth"] for a in online),
                "cache_hits": sum(a["cache"].get("hits", 0) for a in online),
                "cache_misses": sum(a["cache"].get("misses", 0) for a in online),
                "requests": sum(self.metrics.value("kiln_gateway_requests_total", endpoint=e)
                                for e in ("/infer", "/infer/parallel", "/v1/embeddings")),
                "local_fallback": self.metrics.value("kiln_gateway_requests_local_fallback_total"),
            },
        }

    def _records(self) -> list[dict[str, Any]]:
        if self.cluster is None:
            return []
        out = []
        for node in self.cluster.nodes():
            for rec in node.agents:
                live = rec.state == "ready" and rec.handle is not None and rec.name not in self._lost
                out.append({"name": rec.name, "node": rec.node or node.name, "device": rec.device,
                            "state": rec.state, "reason": "" if live else rec.reason,
                            "handle": rec.handle if live else None})
        return out


async def _awaited(call: Any) -> Any:
    return await call


def _split(n: int, agents: list[Any]) -> list[tuple[list[int], list[Any]]]:
    """Contiguous chunks, one per agent; each chunk's failover path is the agents after its own."""
    k = max(1, min(len(agents), n))
    size = -(-n // k)
    return [(list(range(s, min(n, s + size))), agents[g:] + agents[:g])
            for g, s in enumerate(range(0, n, size))]


def _online(record: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    embed = info.get("embed") or {}
    keep = ("device_description", "uptime_s", "pid", "inflight", "capabilities", "gpu",
            "gpu_memory_bytes", "gpu_memory_in_use_bytes")
    return {
        "name": record["name"], "node": record["node"], "device": record["device"],
        "status": "online", "models_loaded": embed.get("models_loaded", []),
        "dims": embed.get("dims", {}), "memory": embed.get("memory", {}),
        "cache": embed.get("cache", {}),
        "queue_depth": int((info.get("inflight") or {}).get("embed", 0)),
        "info": {k: info[k] for k in keep if k in info} | {"batcher": embed.get("batcher", {})},
    }
