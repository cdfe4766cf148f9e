"""`kiln.sample`: chains spread over the cluster's agents, one Posterior back.

    post = kiln.sample(model, chains=4, warmup=500, draws=1000, on="gpu1", seed=1)

Each chosen agent runs its share of the chains in one compiled program (_engine.py).
Chain `i`'s key derives from `(seed, i)` only, so a chain re-run elsewhere — because
its agent died — gives the same draws, and the run still returns every chain;
`timeout` is one deadline for the whole call (its work is cancelled on the agents). `warmup_mode="shared"` warms up once (eXMC's protocol) and sends
the step size, mass matrix and warmed-up positions to every agent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ModelTypeError, NoAgentsError, SpecError
from . import _options as options
from ._compile import NUMPYRO_FORMAT
from ._distributions import pickle_fn
from ._model import Model
from ._posterior import Posterior

SHARED_WARMUP_CHAINS = 4     # chains that warm up in warmup_mode="shared"
SHARED_BURN_IN = 100         # fixed-kernel steps each chain takes from its warmed-up start


def sample(model: Model | Callable[..., Any] | dict[str, Any], chains: int = 4, warmup: int = 500,
           draws: int = 1000, *, data: dict[str, Any] | None = None,
           on: str | list[str] | None = None, seed: int = 0, init: dict[str, Any] | None = None,
           target_accept: float = 0.8, max_tree_depth: int = 10, warmup_mode: str = "per_chain",
           method: str = "nuts", mass_matrix: str = "auto", device: str = "auto",
           timeout: float | None = None, progress: bool = True, retries: int = 2,
           log_likelihood: bool = True) -> Posterior:
    """Sample `model` with `chains` chains of `warmup` + `draws` steps on the agents of `on`.

    `model` is a `kiln.bayes.Model` (validated here, before any agent is called), its
    `to_dict()`, or a NumPyro model function called as `fn(**data)`, shipped by value.
    """
    payload_model, observed = _model_payload(model, data)
    opts, driver = options.split({
        "chains": chains, "warmup": warmup, "draws": draws, "seed": seed,
        "target_accept": target_accept, "max_tree_depth": max_tree_depth,
        "warmup_mode": warmup_mode, "method": method, "mass_matrix": mass_matrix,
        "device": device, "timeout": timeout, "retries": retries, "progress": progress,
        "log_likelihood": log_likelihood})
    from .. import cluster  # here, not at import: building models needs no Ray

    c = cluster.current()
    agents = c.agents(on=on)
    if not agents:
        raise NoAgentsError(f"no ready agent on {on or 'the cluster'}")
    # the payload carries the validated options object; the agent uses it as is
    base = {"model": payload_model, "options": opts, "init": init, "adaptation": None,
            "progress_key": None}
    # _Run reads only the draw count (for its progress bar) from its `base`
    run = _Run(c, on, agents, {"draws": opts.draws}, driver.timeout, driver.retries,
               driver.progress)

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
            p["options"] = opts.model_copy(update={"warmup": min(opts.warmup, SHARED_BURN_IN)})
        payloads.append(p)
    results = run.all(payloads)
    return _posterior(results, observed, run.placement, chains)


class _Run:
    """The calls of one `kiln.sample`, on the cluster's job runner (`kiln._jobs`).

    One job per block of chains; a lost agent's chains re-run on another agent with the same
    keys, and `timeout` is one deadline for the whole call, after which every block still
    running is cancelled on its agent.
    """

    def __init__(self, c: Any, on: Any, agents: list[Any], base: dict[str, Any],
                 timeout: float | None, retries: int, progress: bool) -> None:
        self.on, self.agents, self.base = on, list(agents), base
        self.timeout, self.retries, self.show = timeout, retries, progress
        self.placement: list[dict[str, Any]] = []

    def one(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self._go(op, [payload])[0]

    def all(self, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self._go("sample", payloads)

    def _go(self, op: str, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from .. import _jobs

        n = len(self.agents)
        show = self.show and op == "sample"
        # any key turns the engine's progress callback on; the agent files it under the job
        payloads = [{**p, "progress_key": "progress" if show else None} for p in payloads]
        jobs = [_jobs.Job("bayes", op, p, f"chains {list(p['chains'])}",
                          agents=self.agents[i % n:] + self.agents[:i % n])
                for i, p in enumerate(payloads)]
        bar = _Bar(payloads, self.base["draws"]) if show else None
        policy = _jobs.Policy(
            on=self.on, timeout=self.timeout, retries=self.retries, what="kiln.sample",
            on_progress=bar.running if bar else None, on_done=bar.finished if bar else None)
        try:
            results, where = _jobs.run_with_placement(jobs, policy)
        finally:
            if bar is not None:
                bar.close()
        for r, w, p in zip(results, where, payloads, strict=True):
            self.placement.append({"chains": r.get("chains", p.get("chains")), "op": op,
                                   "node": r.get("node"), "agent": r.get("agent"),
                                   "device": r.get("device"), "device_reason": r.get("device_reason"),
                                   "compiled": r.get("compiled"), "retries": w["retries"],
                                   "seconds": w["seconds"], **r.get("timing", {})})
        return results


class _Bar:
    """A rich progress bar per block of chains: draws done, divergences, step size."""

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
        self.progress.start()

    def running(self, i: int, h: Any, p: dict[str, Any]) -> None:
        info = f"{h.node} {p.get('phase', 'queued')}"
        if "divergences" in p:
            info += f", {int(np.sum(p['divergences']))} divergent"
        if "step_size" in p:
            info += f", step {float(np.mean(p['step_size'])):.3g}"
        self.progress.update(self.tasks[i], completed=p.get("draws_done", 0), info=info)

    def finished(self, i: int, h: Any, r: dict[str, Any]) -> None:
        div = int(np.sum(r["stats"]["diverging"]))
        self.progress.update(self.tasks[i], completed=self.draws,
                             info=f"{r.get('node')} done, {div} divergent")

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
