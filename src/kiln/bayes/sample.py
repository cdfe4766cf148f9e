"""`kiln.sample`: chains spread over the cluster's agents, one Posterior back.

    post = kiln.sample(model, chains=4, warmup=500, draws=1000, on="gpu1", seed=1)

Each chosen agent runs its share of the chains in one compiled program (engine.py).
Chain `i`'s key derives from `(seed, i)` only, so a chain re-run elsewhere — because
its agent died or ran past `timeout` — gives the same draws, and the run still
returns every chain. `warmup_mode="shared"` warms up once (eXMC's protocol) and sends
the step size, mass matrix and warmed-up positions to every agent.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any

import numpy as np

from ..errors import AgentLostError, CallTimeoutError, ModelTypeError, NoAgentsError, SpecError
from .compile import NUMPYRO_FORMAT
from .distributions import pickle_fn
from .model import Model
from .posterior import Posterior

SHARED_WARMUP_CHAINS = 4     # chains that warm up in warmup_mode="shared"
SHARED_BURN_IN = 100         # fixed-kernel steps each chain takes from its warmed-up start


def sample(model: Model | Callable[..., Any] | dict[str, Any], chains: int = 4, warmup: int = 500,
           draws: int = 1000, *, data: dict[str, Any] | None = None,
           on: str | list[str] | None = None, seed: int = 0, init: dict[str, Any] | None = None,
           target_accept: float = 0.8, max_tree_depth: int = 10, warmup_mode: str = "per_chain",
           method: str = "nuts", device: str = "auto", timeout: float | None = None,
           progress: bool = True, retries: int = 2, log_likelihood: bool = True) -> Posterior:
    """Sample `model` with `chains` chains of `warmup` + `draws` steps on the agents of `on`.

    `model` is a `kiln.bayes.Model` (validated here, before any agent is called), its
    `to_dict()`, or a NumPyro model function called as `fn(**data)`, shipped by value.
    """
    payload_model, observed = _model_payload(model, data)
    _check_options(chains, warmup, draws, seed, target_accept, max_tree_depth, warmup_mode,
                   method, device, timeout, retries)
    from .. import cluster  # here, not at import: building models needs no Ray

    c = cluster.current()
    agents = c.agents(on=on)
    if not agents:
        raise NoAgentsError(f"no ready agent on {on or 'the cluster'}")
    base = {"model": payload_model, "seed": int(seed), "warmup": int(warmup), "draws": int(draws),
            "target_accept": float(target_accept), "max_tree_depth": int(max_tree_depth),
            "method": method, "device": device, "init": init, "adaptation": None,
            "progress_key": None, "log_likelihood": bool(log_likelihood)}
    run = _Run(c, on, agents, base, timeout, retries, progress)

    adaptation = None
    if warmup_mode == "shared":
        k = min(chains, SHARED_WARMUP_CHAINS)
        w = run.one("warmup", {**base, "chains": list(range(k))})
        adaptation = {"step_size": w["step_size"], "inverse_mass_matrix": w["inverse_mass_matrix"],
                      "positions": np.asarray(w["positions"])}

    blocks = [list(map(int, b)) for b in np.array_split(np.arange(chains), min(chains, len(agents)))]
    payloads = []
    for b in blocks:
        p = {**base, "chains": b}
        if adaptation is not None:
            pos = adaptation["positions"]
            p["adaptation"] = {**adaptation, "positions": pos[[i % len(pos) for i in b]]}
            p["warmup"] = min(int(warmup), SHARED_BURN_IN)
        payloads.append(p)
    results = run.all(payloads)
    return _posterior(results, observed, run.placement, chains)


def _wait(calls: list[Any], timeout: float, num_returns: int) -> tuple[list[Any], list[Any]]:
    from .. import cluster

    return cluster.wait(calls, timeout=timeout, num_returns=num_returns)


class _Run:
    """Submits calls, watches them, re-runs the chains of a lost or timed-out agent."""

    def __init__(self, c: Any, on: Any, agents: list[Any], base: dict[str, Any],
                 timeout: float | None, retries: int, progress: bool) -> None:
        self.c, self.on, self.agents, self.base = c, on, list(agents), base
        self.timeout, self.retries, self.show = timeout, retries, progress
        self.placement: list[dict[str, Any]] = []
        self.rr = 0

    def _next_agent(self, avoid: set[str]) -> Any:
        alive = [a for a in self.agents if a.name not in avoid] or self.agents
        if not alive:
            self.c.refresh()
            self.agents = self.c.agents(on=self.on)
            alive = self.agents
        a = alive[self.rr % len(alive)]
        self.rr += 1
        return a

    def _lost(self, h: Any, why: str) -> None:
        self.c.mark_lost(h, why)
        self.agents = [a for a in self.agents if a.name != h.name]
        if not self.agents:
            try:
                self.agents = self.c.agents(on=self.on)
            except NoAgentsError:
                self.agents = []
        if not self.agents:
            raise NoAgentsError(f"every agent on {self.on or 'the cluster'} was lost; last: {why}")

    def one(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self._go(op, [payload])[0]

    def all(self, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self._go("sample", payloads)

    def _go(self, op: str, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        tag = uuid.uuid4().hex[:8]
        jobs: dict[int, dict[str, Any]] = {}
        calls: dict[Any, int] = {}

        def submit(i: int, avoid: set[str]) -> None:
            h = self._next_agent(avoid) if i not in jobs or jobs[i]["handle"] is None else jobs[i]["handle"]
            key = f"bayes:{tag}:{i}:{jobs.get(i, {}).get('attempt', 0)}"
            p = {**payloads[i], "progress_key": key if (self.show and op == "sample") else None}
            call = h.submit("bayes", op, p)
            job = jobs.setdefault(i, {"attempt": 0, "avoid": set()})
            job.update(handle=h, call=call, key=key, started=time.monotonic())
            calls[call] = i

        for i in range(len(payloads)):
            jobs[i] = {"attempt": 0, "avoid": set(), "handle": self.agents[i % len(self.agents)]}
            submit(i, set())
        results: dict[int, dict[str, Any]] = {}
        bar = _Bar(payloads, self.base["draws"]) if self.show and op == "sample" else None
        try:
            while len(results) < len(payloads):
                pending = [jobs[i]["call"] for i in jobs if i not in results]
                done, _ = _wait(pending, timeout=0.2, num_returns=len(pending))
                for call in done:
                    i = calls.pop(call)
                    try:
                        results[i] = call.result(timeout=0)
                        results[i]["_started"] = jobs[i]["started"]
                        results[i]["_retries"] = jobs[i]["attempt"]
                    except AgentLostError as e:
                        self._lost(jobs[i]["handle"], str(e))
                        self._retry(jobs, i, submit, e)
                now = time.monotonic()
                for i, job in jobs.items():
                    if i in results or self.timeout is None or job["call"] not in calls:
                        continue
                    if now - job["started"] > self.timeout:
                        job["call"].cancel()
                        calls.pop(job["call"], None)
                        err = CallTimeoutError(
                            f"chains {payloads[i]['chains']} on {job['handle'].name} ran past "
                            f"timeout={self.timeout} s")
                        self._retry(jobs, i, submit, err)
                if bar is not None:
                    bar.update({i: (jobs[i]["handle"], jobs[i]["key"]) for i in jobs if i not in results},
                               results)
        finally:
            if bar is not None:
                bar.close()
        out = []
        for i in range(len(payloads)):
            r = results[i]
            self.placement.append({"chains": r.get("chains", payloads[i].get("chains")), "op": op,
                                   "node": r.get("node"), "agent": r.get("agent"),
                                   "device": r.get("device"), "device_reason": r.get("device_reason"),
                                   "compiled": r.get("compiled"), "retries": r.pop("_retries"),
                                   "seconds": time.monotonic() - r.pop("_started"),
                                   **r.get("timing", {})})
            out.append(r)
        return out

    def _retry(self, jobs: dict[int, Any], i: int, submit: Callable[..., None], err: Exception) -> None:
        job = jobs[i]
        if job["attempt"] >= self.retries:
            raise err
        job["attempt"] += 1
        job["avoid"].add(job["handle"].name)
        job["handle"] = None
        submit(i, job["avoid"])


class _Bar:
    """A rich progress bar per call: draws done, divergences, step size."""

    def __init__(self, payloads: list[dict[str, Any]], draws: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), transient=False)
        self.tasks = [self.progress.add_task(f"chains {p['chains'][0]}-{p['chains'][-1]}",
                                             total=draws, info="starting") for p in payloads]
        self.draws = draws
        self.last = 0.0
        self.progress.start()

    def update(self, running: dict[int, tuple[Any, str]], results: dict[int, Any]) -> None:
        now = time.monotonic()
        for i, r in results.items():
            div = int(np.sum(r["stats"]["diverging"]))
            self.progress.update(self.tasks[i], completed=self.draws,
                                 info=f"{r.get('node')} done, {div} divergent")
        if now - self.last < 0.5:
            return
        self.last = now
        for i, (h, key) in running.items():
            if h is None:
                continue
            p = h.progress(key) or {}
            info = f"{h.node} {p.get('phase', 'queued')}"
            if "divergences" in p:
                info += f", {int(np.sum(p['divergences']))} divergent"
            if "step_size" in p:
                info += f", step {float(np.mean(p['step_size'])):.3g}"
            self.progress.update(self.tasks[i], completed=p.get("draws_done", 0), info=info)

    def close(self) -> None:
        self.progress.stop()


def _model_payload(model: Any, data: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what crosses the wire, observed data for the InferenceData)."""
    if isinstance(model, dict):
        model = Model.from_json(model)
    if isinstance(model, Model):
        if data is not None:
            raise SpecError("data", "data= goes with a NumPyro model function; a kiln Model "
                            "carries its data (Model.data / Model.obs)")
        model.validate()
        observed = {e["name"]: np.asarray(e["value"]["array"]) for e in model.entries
                    if e["kind"] == "obs"}
        return model.to_dict(), observed
    if callable(model):
        data = dict(data or {})
        for k, v in data.items():
            arr = np.asarray(v)
            if arr.dtype == object:
                raise SpecError(f"data[{k!r}]", "numbers or arrays of numbers")
            data[k] = arr
        return {"format": NUMPYRO_FORMAT, "fn": pickle_fn(model), "data": data}, {}
    raise ModelTypeError(None, "model", f"{type(model).__name__} is not a kiln Model or a "
                         "NumPyro model function")


def _check_options(chains: Any, warmup: Any, draws: Any, seed: Any, target_accept: Any,
                   max_tree_depth: Any, warmup_mode: str, method: str, device: str,
                   timeout: Any, retries: Any) -> None:
    for name, v, lo in (("chains", chains, 1), ("warmup", warmup, 0), ("draws", draws, 1),
                        ("seed", seed, 0), ("max_tree_depth", max_tree_depth, 1), ("retries", retries, 0)):
        if isinstance(v, bool) or not isinstance(v, Integral) or v < lo:
            raise SpecError(name, f"an integer >= {lo}, got {v!r}")
    if seed >= 2**32:
        raise SpecError("seed", "must be < 2**32")
    if isinstance(target_accept, bool) or not isinstance(target_accept, Real) or not 0 < target_accept < 1:
        raise SpecError("target_accept", f"a number in (0, 1), got {target_accept!r}")
    if warmup_mode not in ("per_chain", "shared"):
        raise SpecError("warmup_mode", f"'per_chain' or 'shared', got {warmup_mode!r}")
    if method not in ("nuts", "chees"):
        raise SpecError("method", f"'nuts' or 'chees', got {method!r}")
    if method == "chees" and warmup_mode == "shared":
        raise SpecError("warmup_mode", "ChEES adapts across the chains of each call; use "
                        "warmup_mode='per_chain' with method='chees'")
    if device not in ("auto", "cpu", "gpu"):
        raise SpecError("device", f"'auto', 'cpu' or 'gpu', got {device!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, Real)
                                or not timeout > 0 or math.isinf(timeout)):
        raise SpecError("timeout", f"seconds > 0 or None, got {timeout!r}")


def _posterior(results: list[dict[str, Any]], observed: dict[str, Any],
               placement: list[dict[str, Any]], chains: int) -> Posterior:
    by_chain: dict[int, tuple[dict[str, Any], int]] = {}
    for r in results:
        for j, ch in enumerate(r["chains"]):
            by_chain[int(ch)] = (r, j)
    order = list(range(chains))

    def stack(group: str) -> dict[str, np.ndarray]:
        names = results[0][group].keys()
        return {n: np.stack([np.asarray(by_chain[c][0][group][n])[by_chain[c][1]] for c in order])
                for n in names}

    warnings = [w for r in results for w in r.get("warnings", [])]
    for p in placement:
        if p.get("retries"):
            warnings.append(f"chains {p['chains']} were re-run {p['retries']} time(s) after an agent "
                            f"was lost or timed out; they ran on {p['node']} with the same keys")
    timing = {"total_s": max((p.get("seconds", 0.0) for p in placement), default=0.0),
              "compile_s": max((p.get("compile_s", 0.0) for p in placement), default=0.0),
              "sample_s": max((p.get("sample_s", 0.0) for p in placement), default=0.0)}
    return Posterior(stack("samples"), stack("stats"), stack("log_likelihood"), observed,
                     placement=placement, warnings=warnings, timing=timing, chain_ids=order)
