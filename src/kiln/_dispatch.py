"""``kiln.dispatch``: seed 000's promise — plain data to a named node, samples back.

    kiln.dispatch("gpu2", {"dist": "normal", "mu": 0.0, "sigma": 1.0},
                  num_warmup=200, num_samples=200)

The spec crosses the wire as plain data; the node's agent builds the model on its own device
(seed 000's fix 5: no device handle ever travels) and returns plain numpy arrays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln import cluster
from kiln.bayes import _options as options
from kiln.errors import SpecError


@dataclass
class DispatchResult:
    """Draws from one node (or several, after ``combine``), with where and how fast."""

    samples: dict[str, np.ndarray]            # pooled over chains: (chains * draws, *shape)
    chains: list[dict[str, np.ndarray]]       # per chain: (draws, *shape)
    stats: dict[str, Any]
    timing: dict[str, float]
    node: str
    device: str
    agent: str = ""
    compiled: bool = False
    parts: list[DispatchResult] = field(default_factory=list, repr=False)

    @property
    def variable(self) -> str:
        return next(iter(self.samples))

    def mean(self, var: str | None = None) -> float:
        return float(np.mean(self.samples[var or self.variable]))

    def std(self, var: str | None = None) -> float:
        return float(np.std(self.samples[var or self.variable], ddof=1))

    def __repr__(self) -> str:
        var = self.variable
        n = len(self.samples[var])
        return (f"<DispatchResult {var}: n={n} mean={self.mean():.3f} sd={self.std():.3f} "
                f"on {self.node} ({self.device}) in {self.timing.get('total_s', 0):.3f} s>")

    def _repr_html_(self) -> str:
        from kiln._display import dispatch_html

        return dispatch_html(self)


_NAMES = {"warmup": "num_warmup", "draws": "num_samples"}   # seed 000's spelling


def dispatch(node: str, spec: dict[str, Any], *, num_warmup: int = 500, num_samples: int = 500,
             chains: int = 1, seed: int = 0, timeout: float | None = None,
             target_accept: float = 0.8, max_tree_depth: int = 10, device: str = "auto",
             method: str = "nuts", mass_matrix: str = "auto", **unknown: Any) -> DispatchResult:
    """Sample the distribution ``spec`` (``{"dist": NAME, **params}``) with NUTS on ``node``.

    Bad specs and options raise ``SpecError`` naming the field, on the driver, before anything
    is sent; an unknown node raises ``UnknownNodeError`` listing the known ones; a call past
    ``timeout`` seconds raises ``CallTimeoutError`` and the agent stays usable.
    """
    if unknown:
        raise SpecError(sorted(unknown)[0], "unknown option; known options: " + ", ".join(sorted(
            ["num_warmup", "num_samples", "chains", "seed", "timeout", "target_accept",
             "max_tree_depth", "device", "method", "mass_matrix"])))
    opts, driver = options.split({
        "warmup": num_warmup, "draws": num_samples, "chains": chains, "seed": seed,
        "timeout": timeout, "target_accept": target_accept, "max_tree_depth": max_tree_depth,
        "device": device, "method": method, "mass_matrix": mass_matrix},
        names=_NAMES)
    if not isinstance(spec, dict):
        raise SpecError("spec", f"must be a dict like {{'dist': 'normal', 'mu': 0.0, 'sigma': 1.0}}, "
                        f"got {type(spec).__name__}")
    from kiln.bayes._shorthand import spec_to_model

    model = spec_to_model(spec)
    agent = cluster.current().agents(on=node)[0]
    payload = {"model": model.to_dict(), "chains": list(range(driver.chains)), "options": opts,
               "init": None, "adaptation": None, "progress_key": None}
    started = time.perf_counter()
    out = agent.invoke("bayes", "sample", payload, timeout=driver.timeout)
    round_trip = time.perf_counter() - started
    return _result(out, agent, round_trip)


def _result(out: dict[str, Any], agent: cluster.AgentHandle, round_trip: float) -> DispatchResult:
    samples = {k: np.asarray(v) for k, v in out["samples"].items()}
    n_chains = next(iter(samples.values())).shape[0]
    chains = [{k: v[i] for k, v in samples.items()} for i in range(n_chains)]
    pooled = {k: v.reshape((-1, *v.shape[2:])) for k, v in samples.items()}
    stats = out.get("stats", {})
    summary = {
        "step_size": float(np.mean(stats["step_size"])) if "step_size" in stats else None,
        "acceptance_rate": float(np.mean(stats["acceptance_rate"])) if "acceptance_rate" in stats else None,
        "divergences": int(np.sum(stats["diverging"])) if "diverging" in stats else 0,
        "tree_depth": float(np.mean(stats["tree_depth"])) if "tree_depth" in stats else None,
        "chains": n_chains,
    }
    timing = {k: float(v) for k, v in out.get("timing", {}).items()}
    timing["round_trip_s"] = round_trip
    return DispatchResult(samples=pooled, chains=chains, stats=summary, timing=timing,
                          node=agent.node, device=out.get("device", agent.device), agent=agent.name,
                          compiled=bool(out.get("compiled", False)))


def combine(results: list[DispatchResult]) -> DispatchResult:
    """Pool the draws of several dispatches (seed 000's "combined 400 samples")."""
    if not results:
        raise SpecError("results", "combine needs at least one DispatchResult")
    names = set(results[0].samples)
    for i, r in enumerate(results):
        if set(r.samples) != names:
            raise SpecError(f"results[{i}]", f"has variables {sorted(r.samples)}, expected {sorted(names)}")
    samples = {k: np.concatenate([r.samples[k] for r in results]) for k in results[0].samples}
    stats = {
        "step_size": [r.stats.get("step_size") for r in results],
        "acceptance_rate": float(np.mean([r.stats.get("acceptance_rate") or 0.0 for r in results])),
        "divergences": sum(r.stats.get("divergences", 0) for r in results),
        "tree_depth": [r.stats.get("tree_depth") for r in results],
        "chains": sum(r.stats.get("chains", 1) for r in results),
    }
    timing = {"total_s": max(r.timing.get("total_s", 0.0) for r in results),
              "round_trip_s": max(r.timing.get("round_trip_s", 0.0) for r in results)}
    return DispatchResult(samples=samples, chains=[c for r in results for c in r.chains],
                          stats=stats, timing=timing,
                          node="+".join(r.node for r in results),
                          device="+".join(r.device for r in results),
                          parts=list(results))
