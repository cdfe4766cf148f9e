"""The gateway's engine: route texts to agents, fail over, fall back to a local encoder.

It is the seed's ``resilient_inference`` made whole: the routing strategy gives each group of
texts an order of agents; a group whose agent dies (``AgentLostError``) or errs moves to the
next agent, at most ``retries`` times; when no agent is ready, or all of them failed, the texts
are encoded in the gateway process itself (``fallback``), and only when that is off or fails
too does the request fail (503 with the reasons).

One deadline per request (``timeout``) is carried across every attempt: an attempt gets what
is left of it, and an attempt that runs past it is cancelled on its agent (the agent drops the
texts before encoding them, or stops) and the request answers 504. Nothing is encoded twice
because a clock ran out: the issue's 1,400-text request was encoded three times (two agents,
then the fallback), 3x the work, and answered after 158 s.

Long: routing, failover, deadlines, fallback and status are one request's path through the
gateway; split, each part would reach into the others' state.

The cluster itself is watched by ``kiln.serve._attach.ClusterLink`` (attached, lost, detached);
while it is not attached, requests go to the fallback without touching Ray.
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

from kiln._gc import pauses
from kiln._routing import STRATEGIES, Router, make_router, plan
from kiln._settings import settings
from kiln.embeddings import is_retryable
from kiln.errors import AgentLostError, DeadlineExceededError, GatewayError, NoAgentsError
from kiln.serve._attach import ClusterLink
from kiln.serve._coalesce import Coalescer
from kiln.serve._lag import LoopLag
from kiln.serve._metrics import Metrics

log = logging.getLogger("kiln.serve")


@dataclass(frozen=True)
class Limits:
    """What one request may ask; beyond it the gateway answers 413 (or 503 when full)."""

    max_texts: int = 2048             # texts per request
    max_chars: int = 100_000          # characters per text
    max_body_bytes: int = 8 * 2**20   # request body
    max_inflight: int = 256           # requests served at once; more -> 503 + Retry-After


# Server-Timing's stages and the answer's key for each (kiln.serve._coalesce, the worker)
STAGES = {"queue": "queue_s", "cluster": "call_s", "agent": "seconds"}


class Unavailable(GatewayError):
    """No agent could answer and the local fallback is off or failed too."""


class QueueFull(GatewayError):
    """Too many requests in flight."""


class _Coalesced:
    """An attempt riding the coalescer, shaped like a Call: awaitable, cancellable."""

    def __init__(self, coalescer: Coalescer, agent: Any, payload: dict[str, Any]) -> None:
        self._coalescer, self._agent, self._payload = coalescer, agent, payload
        self._future: asyncio.Future | None = None

    def start(self) -> asyncio.Future:
        if self._future is None:
            self._future = self._coalescer.submit(
                self._agent, self._payload["texts"], self._payload["model"],
                self._payload.get("cache", True))
        return self._future

    def __await__(self):
        return self.start().__await__()

    def cancel(self) -> None:
        if self._future is not None:
            self._future.cancel()


class _ClusterLost(Exception):
    pass


class _AgentGone(Exception):
    pass


class Outcome(NamedTuple):
    embeddings: np.ndarray
    nodes: list[str]
    cached: int
    truncated: int
    tokens: int
    fallback: bool
    # seconds by stage, the slowest group's: queue (waiting for the coalescer's call), cluster
    # (the agent call, seen from here), agent (the job inside the agent); Server-Timing
    stages: dict[str, float] | None = None


@dataclass
class Served:
    """What the endpoints share: ``request.app.state.kiln``."""

    gateway: Gateway
    metrics: Metrics
    limits: Limits
    models: list[str]


class Gateway:
    """Routing, failover and fallback for one app; see the module docstring.

    ``fallback``: encode in this process when no agent can; its model (``fallback_models``)
    is loaded when the gateway starts, never on a request's path.
    """

    def __init__(self, link: ClusterLink, *, strategy: str = "round_robin", metrics: Metrics,
                 timeout: float = 30.0, retries: int = 2, fallback: bool = True,
                 refresh_s: float = 1.0, limits: Limits | None = None,
                 fallback_models: tuple[str, ...] = ("default",)) -> None:
        make_router(strategy)  # an unknown strategy fails here, before the server starts
        self.link = link
        self.strategy = strategy
        self.metrics = metrics
        # Requests for one agent share a cluster call (serve/_coalesce.py); KILN_GATEWAY_COALESCE=0
        # (read when the gateway is made, not when its module is imported) gives each its own.
        env = settings()
        self.coalescer: Coalescer | None = (
            Coalescer(inflight=env.gateway_coalesce_inflight) if env.gateway_coalesce else None)
        self.timeout = timeout
        self.retries = retries
        self.fallback = fallback
        self.fallback_models = fallback_models if fallback else ()
        self.refresh_s = refresh_s
        self.limits = limits or Limits()
        self.routers: dict[str, Router] = {name: make_router(name) for name in STRATEGIES}
        self.agents: list[Any] = []
        self.node_name = "gateway@" + (socket.gethostname().split(".")[0] or "local")
        self.started = time.time()
        self.inflight = 0
        # Agent name -> when this gateway saw it fail. A restarted agent keeps its name (and,
        # restarted by Ray in place, its handle), so a name is forgiven once a refresh that
        # began after the failure lists it ready again; keeping names for good left a healthy
        # node unused until the gateway restarted.
        self._lost: dict[str, float] = {}
        self._local: Any = None  # kiln.embeddings.LocalEncoder, loaded at start or never
        self._local_lock = threading.Lock()
        self._task: asyncio.Task | None = None
        self.lag = LoopLag()
        self._lag_task: asyncio.Task | None = None
        metrics.stalls(self.lag.report, pauses)  # in /metrics too, read when scraped
        self._refreshing: asyncio.Future | None = None
        # Agents that failed their last status checks in a row, and one event per agent that
        # calls in flight on it wait on beside their answer: a call in flight on an agent whose
        # process died was seen to hang until Ray had restarted it (42 s here), past the
        # request's deadline, so the refresher declares it gone after two missed checks.
        self._missed: dict[str, int] = {}
        self._gone: dict[str, asyncio.Event] = {}
        # One waiting task per event, shared by every call in flight (``_waiter``).
        self._waiters: dict[asyncio.Event, asyncio.Future] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def cluster(self) -> Any:
        return self.link.cluster

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.fallback:
            # Loaded now or never: a first bad request used to load it and take the gateway
            # from 137 MB to 1.2 GB on the request path.
            await asyncio.to_thread(self._load_fallback)
        await self.link.start()
        if self.link.state == "attached":
            await asyncio.to_thread(self.refresh)
        self.metrics.agents_ready.set(len(self.agents))
        self._task = asyncio.create_task(self._watch())
        self._lag_task = asyncio.create_task(self.lag.run())

    async def stop(self) -> None:
        for task in (self._task, self._lag_task):
            if task is None:
                continue
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        for waiter in self._waiters.values():
            waiter.cancel()
        self._waiters.clear()
        await self.link.stop()

    async def _watch(self) -> None:
        while True:
            # Every refresh_s, and at once when the link attaches: a fresh worker that attaches
            # to a restarted head serves from its agents a tick sooner. Detached, it looks for
            # the head every attach_every_s, however long refresh_s is.
            every = (min(self.refresh_s, self.link.attach_every_s)
                     if self.link.state == "detached" else self.refresh_s)
            try:
                await asyncio.wait_for(self.link.attached.wait(), every)
            except TimeoutError:
                pass
            self.link.attached.clear()
            try:
                await self.link.tick()
            except Exception as err:  # noqa: BLE001 - logged; the watcher must outlive
                # whatever the cluster does (a traceback every tick would drown the log)
                log.warning("kiln serve: watching the cluster failed: %s", err)
            self.metrics.cluster_attached.set(self.link.state == "attached")
            if self.link.state != "attached":
                self._set_agents([])
                continue
            if self._refreshing is None or self._refreshing.done():
                # One refresh at a time: a slow one (agents starting on a new node) must not
                # pile threads up behind it.
                self._refreshing = asyncio.ensure_future(asyncio.to_thread(self._refresh_safely))

    def _refresh_safely(self) -> None:
        try:
            self.refresh()
        except Exception as err:  # noqa: BLE001 - logged; the cluster is changing under us
            # and the next tick retries
            log.warning("kiln serve: refreshing agents failed: %s", err)

    def refresh(self) -> None:
        """Ready agents and their queue depths (runs in a worker thread)."""
        cluster = self.cluster
        if cluster is None or self.link.state != "attached":
            self._set_agents([])
            return
        began = time.monotonic()
        cluster.refresh()
        try:
            agents = cluster.agents()
        except NoAgentsError:  # every agent refused to start: /cluster says why
            agents = []
        depths = {}
        for h in agents:
            try:
                depths[h.name] = int((h.info(timeout=2).get("inflight") or {}).get("embed", 0))
                self._missed.pop(h.name, None)
            except Exception:  # info answers from its own threads even when the agent is busy
                log.debug("kiln serve: %s did not answer info", h.name, exc_info=True)
                self._missed[h.name] = self._missed.get(h.name, 0) + 1
                if self._missed[h.name] == 2 and self._loop is not None:
                    self._loop.call_soon_threadsafe(self._give_up_on, h.name)
        self.routers["least_loaded"].report(depths)
        names = {h.name for h in agents}
        self._lost = {n: t for n, t in self._lost.items() if n in names and t >= began}
        if self.link.state == "attached":
            self._set_agents([h for h in agents if h.name not in self._lost])

    def _give_up_on(self, name: str) -> None:
        """Calls in flight on agent ``name`` stop waiting (they fail over; see __init__)."""
        event = self._gone.pop(name, None)
        if event is not None:
            event.set()
            self._waiters.pop(event, None)  # the calls waiting on it hold it until they see it

    def _set_agents(self, agents: list[Any]) -> None:
        self.agents = agents
        self.metrics.agents_ready.set(len(agents))

    def _mark_lost(self, agent: Any) -> None:
        self._lost[agent.name] = time.monotonic()
        self._set_agents([h for h in self.agents if h.name != agent.name])
        cluster = self.cluster
        if cluster is not None:
            cluster.mark_lost(agent)

    def health(self) -> dict[str, Any]:
        """``ok`` when an agent is ready; ``degraded`` when the gateway serves without one."""
        ready = len(self.agents)
        return {"status": "ok" if ready else "degraded", "agents_ready": ready,
                "fallback": self.fallback, "cluster": self.link.state}

    # -- requests ------------------------------------------------------------------------------
    def admit(self) -> None:
        if self.inflight >= self.limits.max_inflight:
            raise QueueFull(f"{self.inflight} requests in flight (limit {self.limits.max_inflight})")

    async def encode(self, texts: list[str], model: str, strategy: str | None = None,
                     parallel: bool = False) -> Outcome:
        """Embeddings for ``texts`` in input order, from agents or, failing that, locally."""
        deadline = time.monotonic() + self.timeout
        router = self.routers[strategy or self.strategy]
        agents = list(self.agents)
        if not agents:
            why = ("no agent is ready" if self.link.state == "attached"
                   else f"no agent is ready (cluster {self.link.state})")
            return await self._fallback(texts, model, why, deadline)
        if parallel and not router.per_text:
            groups = _split(len(texts), router.order(agents, texts[0]))
        else:
            groups = plan(texts, agents, router)
        answers = await _all_or_first_error(
            [self._group(texts, idx, order, model, router, deadline) for idx, order in groups])
        dim = next((a["embeddings"].shape[1] for a in answers if isinstance(a, dict)), None)
        failed = [(idx, why) for (idx, _), why in zip(groups, answers, strict=True)
                  if isinstance(why, str)]
        local = None
        if failed:
            rest = [i for idx, _ in failed for i in idx]
            reasons = "; ".join(sorted({why for _, why in failed}))
            local = await self._fallback([texts[i] for i in rest], model, reasons, deadline)
            dim = local.embeddings.shape[1]
        whole = len(groups) == 1 and local is None  # one group of every text, in order
        out = answers[0]["embeddings"] if whole else np.empty((len(texts), dim), np.float32)
        nodes: list[str] = []
        cached = truncated = tokens = 0
        stages = dict.fromkeys(STAGES, 0.0)
        for (idx, _), answer in zip(groups, answers, strict=True):
            if isinstance(answer, dict):
                if not whole:
                    out[idx] = answer["embeddings"]
                cached += answer["cached"]
                truncated += answer["truncated"]
                tokens += answer["tokens"]
                if answer["node"] not in nodes:
                    nodes.append(answer["node"])
                for stage, key in STAGES.items():
                    stages[stage] = max(stages[stage], answer.get(key) or 0.0)
        if local is not None:
            out[rest] = local.embeddings
            truncated += local.truncated
            tokens += local.tokens
            nodes.append(self.node_name)
        if len(failed) < len(groups):
            self.metrics.distributed.inc()
        self.metrics.cache_hits.inc(cached)
        self.metrics.cache_misses.inc(len(texts) - cached)
        return Outcome(out, nodes, cached, truncated, tokens, local is not None, stages)

    async def _group(self, texts: list[str], idx: list[int], order: list[Any], model: str,
                     router: Router, deadline: float) -> dict[str, Any] | str:
        """One group's answer from the first agent that gives one, or why none did."""
        payload = {"texts": [texts[i] for i in idx], "model": model}
        why = "no agent answered"
        tried = 0
        for agent in order:
            if tried > self.retries:
                break
            if agent.name in self._lost:
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceededError(self._late(why))
            if tried:
                self.metrics.failovers.labels(reason=why.split(":")[0]).inc()
            tried += 1
            router.started(agent)
            started = time.perf_counter()
            call = self._submit(agent, payload)
            try:
                answer = await self._answer(call, left, agent.name)
            except _ClusterLost:
                # The head is gone: Ray may never say that this agent died with it.
                why = f"agent_lost: {agent.name}: the cluster was lost during the call"
                break
            except _AgentGone:
                self._cancel(call)
                self._mark_lost(agent)
                why = f"agent_lost: {agent.name} stopped answering during the call"
                continue
            except asyncio.CancelledError:
                # Another group failed for good, or the server stops: this attempt is superseded.
                self._cancel(call)
                raise
            except TimeoutError:  # asyncio's: the request's one deadline passed on this agent
                self._cancel(call)
                raise DeadlineExceededError(self._late(f"{agent.name} was still encoding "
                                                  f"{len(idx)} texts")) from None
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
            took = time.perf_counter() - started
            self.metrics.node_requests.labels(node=answer["node"] or agent.name).inc()
            self.metrics.agent_latency.labels(node=answer["node"] or agent.name).observe(took)
            if "call_s" not in answer:  # a call of its own (coalescing off): no queue
                answer["call_s"] = took
            return answer
        return why

    async def _answer(self, call: Any, left: float, name: str) -> Any:
        """``call``'s result within ``left`` s (TimeoutError); ``_ClusterLost`` as soon as the
        cluster is lost, ``_AgentGone`` as soon as the refresher gives up on the agent."""
        work = call.start() if isinstance(call, _Coalesced) else asyncio.ensure_future(_awaited(call))
        lost = self._waiter(self.link.lost)
        gone = self._waiter(self._gone.setdefault(name, asyncio.Event()))
        await asyncio.wait({work, lost, gone}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        work.cancel()
        if lost.done() and not lost.cancelled():
            raise _ClusterLost()
        if gone.done() and not gone.cancelled():
            raise _AgentGone()
        raise TimeoutError()

    def _waiter(self, event: asyncio.Event) -> asyncio.Future:
        """A task done when ``event`` is set, one per event, shared by every call in flight:
        three tasks a request cost the gateway a visible share of its CPU at 64 clients."""
        waiter = self._waiters.get(event)
        if waiter is None or (waiter.done() and not event.is_set()):
            waiter = self._waiters[event] = asyncio.ensure_future(event.wait())
        return waiter

    def _submit(self, agent: Any, payload: dict[str, Any]) -> Any:
        """One attempt on ``agent``: through the coalescer (requests for the same agent ride
        one cluster call), or a call of its own when coalescing is off."""
        if self.coalescer is None:
            return agent.submit("embed", "encode", payload)
        return _Coalesced(self.coalescer, agent, payload)

    def _cancel(self, call: Any) -> None:
        self.metrics.cancelled.inc()
        try:
            call.cancel()
        except Exception as err:  # the agent is gone: nothing runs there any more
            log.debug("kiln serve: cancelling %s: %s", call, err, exc_info=True)

    def _late(self, what: str) -> str:
        return (f"the request ran past its deadline of {self.timeout:g} s ({what}); it was "
                "cancelled, not retried. Send fewer texts per request, or start the gateway "
                "with a longer --timeout")

    async def _fallback(self, texts: list[str], model: str, why: str, deadline: float) -> Outcome:
        if not self.fallback:
            raise Unavailable(f"no agent could encode the texts ({why}) and the local fallback "
                              "is off (start the gateway with --fallback on, or add agents)")
        if model not in self.fallback_models:
            raise Unavailable(f"no agent could encode the texts ({why}) and the local fallback "
                              f"serves only {', '.join(self.fallback_models)}, not {model!r}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError(self._late(why))
        self.metrics.local_fallback.inc()
        cancel = threading.Event()
        try:
            answer = await asyncio.wait_for(
                asyncio.to_thread(self._local_encode, texts, model, cancel), left)
        except (TimeoutError, asyncio.CancelledError) as err:
            cancel.set()  # the local batcher drops the texts if their pass has not begun
            if isinstance(err, TimeoutError):
                raise DeadlineExceededError(self._late("the local fallback was still encoding")
                                       ) from None
            raise
        except Exception as err:
            if not is_retryable(err):
                raise
            raise Unavailable(f"no agent could encode the texts ({why}) and the local fallback "
                              f"failed: {type(err).__name__}: {err}") from err
        return Outcome(answer["embeddings"], [self.node_name], answer["cached"],
                       answer["truncated"], answer["tokens"], True)

    def _load_fallback(self) -> None:
        from kiln.embeddings import LocalEncoder

        with self._local_lock:
            if self._local is None:
                self._local = LocalEncoder(self.fallback_models, name=self.node_name)

    def _local_encode(self, texts: list[str], model: str, cancel: threading.Event
                      ) -> dict[str, Any]:
        if self._local is None:
            raise Unavailable("the local fallback was not loaded at start")
        return self._local.encode(texts, model, cancel)

    # -- status -----------------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        """This gateway, every agent online or offline with its info, and totals."""
        records = await asyncio.to_thread(self._records) if self.link.state == "attached" else []
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
        return {
            "gateway": {
                "node": self.node_name, "pid": os.getpid(), "strategy": self.strategy,
                "address": self.link.address, "attached": self.link.state == "attached",
                "cluster": self.link.state, "cluster_error": self.link.error,
                "status": self.health()["status"], "fallback": self.fallback,
                "fallback_loaded": self._local is not None,
                "uptime_s": round(time.time() - self.started, 1),
                "inflight": self.inflight, "timeout_s": self.timeout, "retries": self.retries,
                "limits": self.limits.__dict__,
                # requests per cluster call: how much the coalescer merges (None when off)
                "coalescer": self.coalescer.stats() if self.coalescer else None,
                # what a slow request may have waited for in this worker (kiln._gc, _lag)
                "loop_lag": self.lag.report(), "gc": pauses(),
                "event_loop": _loop_name(),
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
        cluster = self.cluster
        if cluster is None:
            return []
        out = []
        for node in cluster.nodes():
            for rec in node.agents:
                live = rec.state == "ready" and rec.handle is not None and rec.name not in self._lost
                out.append({"name": rec.name, "node": rec.node or node.name, "device": rec.device,
                            "state": rec.state, "reason": "" if live else rec.reason,
                            "handle": rec.handle if live else None})
        return out


def _loop_name() -> str:
    """The running event loop's kind (``kiln serve --loop``): "uvloop" or "asyncio"."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"


async def _awaited(call: Any) -> Any:
    return await call


async def _all_or_first_error(coros: list[Any]) -> list[Any]:
    """Run ``coros`` at once; the first that raises cancels the others (and so their calls on
    the agents) and its error is raised once they have stopped."""
    if len(coros) == 1:  # one group (most requests): no task of its own to make
        return [await coros[0]]
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    failed = next((t for t in tasks if t.done() and not t.cancelled() and t.exception()), None)
    if failed is not None:
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        raise failed.exception()
    return [t.result() for t in tasks]


def _split(n: int, agents: list[Any]) -> list[tuple[list[int], list[Any]]]:
    """Contiguous chunks, one per agent; each chunk's failover path is the agents after its own."""
    k = max(1, min(len(agents), n))
    size = -(-n // k)
    return [(list(range(s, min(n, s + size))), agents[g:] + agents[:g])
            for g, s in enumerate(range(0, n, size))]


def _online(record: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    embed = info.get("embed") or {}
    keep = ("device_description", "uptime_s", "pid", "inflight", "capabilities", "gpu",
            "gpu_memory_bytes", "gpu_memory_in_use_bytes", "startup", "gc")
    return {
        "name": record["name"], "node": record["node"], "device": record["device"],
        "status": "online", "models_loaded": embed.get("models_loaded", []),
        "dims": embed.get("dims", {}), "memory": embed.get("memory", {}),
        "cache": embed.get("cache", {}),
        "queue_depth": int((info.get("inflight") or {}).get("embed", 0)),
        "info": {k: info[k] for k in keep if k in info} | {"batcher": embed.get("batcher", {})},
    }
