"""`Posterior`: the draws of a run, per chain and pooled, with ArviZ diagnostics.

    post.chains[0]["mu"]   # (draws,)            post["mu"]   # pooled (chains * draws,)
    post.summary()         # mean, sd, hdi_3%, hdi_97%, mcse, ess_bulk, ess_tail, r_hat
    post.idata             # arviz.InferenceData: posterior, sample_stats, log_likelihood, observed_data
    post.save("run.nc"); kiln.bayes.load("run.nc")
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

STAT_NAMES = {"acceptance_rate": "acceptance_rate", "diverging": "diverging", "energy": "energy",
              "tree_depth": "tree_depth", "num_steps": "n_steps"}


class Posterior(Mapping[str, np.ndarray]):
    """Draws of every variable as `(chains, draws, *shape)` arrays, plus run metadata."""

    def __init__(self, samples: dict[str, np.ndarray], stats: dict[str, np.ndarray] | None = None,
                 log_likelihood: dict[str, np.ndarray] | None = None,
                 observed_data: dict[str, np.ndarray] | None = None,
                 placement: list[dict[str, Any]] | None = None, warnings: list[str] | None = None,
                 timing: dict[str, float] | None = None, chain_ids: list[int] | None = None) -> None:
        self.samples = {k: np.asarray(v) for k, v in samples.items()}
        self.stats = {k: np.asarray(v) for k, v in (stats or {}).items()}
        self.log_likelihood = {k: np.asarray(v) for k, v in (log_likelihood or {}).items()}
        self.observed_data = {k: np.asarray(v) for k, v in (observed_data or {}).items()}
        self.placement = placement or []
        self.run_warnings = list(warnings or [])
        self.timing = timing or {}
        first = next(iter(self.samples.values()))
        self.chain_ids = chain_ids if chain_ids is not None else list(range(first.shape[0]))
        self._idata: Any = None

    # -- arrays -------------------------------------------------------------------

    @property
    def num_chains(self) -> int:
        return next(iter(self.samples.values())).shape[0]

    @property
    def num_draws(self) -> int:
        return next(iter(self.samples.values())).shape[1]

    @property
    def chains(self) -> list[dict[str, np.ndarray]]:
        """One dict per chain: name -> (draws, *shape)."""
        return [{k: v[i] for k, v in self.samples.items()} for i in range(self.num_chains)]

    def __getitem__(self, name: str) -> np.ndarray:
        """Pooled draws of `name`: (chains * draws, *shape)."""
        v = self.samples[name]
        return v.reshape((-1,) + v.shape[2:])

    def __iter__(self) -> Iterator[str]:
        return iter(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    # -- sampler diagnostics ----------------------------------------------------------

    @property
    def warnings(self) -> list[str]:
        """What went wrong on the agents, then the sampler's diagnostics in plain words."""
        return self.run_warnings + self._diagnostic_warnings()

    def sampler_diagnostics(self) -> dict[str, Any]:
        """Per chain: divergent transitions after warm-up, and the fraction of draws whose
        trajectory hit `max_tree_depth` (NUTS gave up lengthening it, not the posterior)."""
        div = self.stats.get("diverging")
        depth, max_depth = self.stats.get("tree_depth"), self.stats.get("max_tree_depth")
        out: dict[str, Any] = {"chain": list(self.chain_ids)}
        out["divergences"] = (np.asarray(div).sum(axis=1).astype(int).tolist()
                              if div is not None else None)
        if depth is not None and max_depth is not None and np.all(np.asarray(max_depth) > 0):
            md = np.asarray(max_depth).reshape(len(out["chain"]), -1)[:, :1]
            out["max_tree_depth"] = md[:, 0].astype(int).tolist()
            out["at_max_tree_depth"] = np.mean(np.asarray(depth) >= md, axis=1).tolist()
        return out

    def _diagnostic_warnings(self) -> list[str]:
        d = self.sampler_diagnostics()
        found = []
        div = d.get("divergences")
        if div and sum(div):
            total = sum(div) / (self.num_chains * self.num_draws)
            found.append(
                f"{sum(div)} divergent transition(s) after warm-up ({total:.1%} of draws; per "
                f"chain {div}): the sampler could not follow the posterior's curvature somewhere, "
                "so the draws may be biased there. Raise target_accept (e.g. 0.95), or "
                "reparameterise (e.g. a non-centred hierarchical model).")
        sat = d.get("at_max_tree_depth")
        if sat and max(sat) >= 0.01:
            worst = max(sat)
            found.append(
                f"{worst:.0%} of draws hit max_tree_depth={d['max_tree_depth'][0]} (per chain "
                f"{', '.join(f'{x:.0%}' for x in sat)}): trajectories were cut short, which "
                "costs time and mixing. Parameters on very different scales or strongly "
                "correlated usually cause it: try mass_matrix='dense', standardise predictors "
                "or reparameterise; or raise max_tree_depth.")
        return found

    def mean(self, name: str) -> np.ndarray:
        return self[name].mean(axis=0)

    def std(self, name: str) -> np.ndarray:
        return self[name].std(axis=0)

    # -- ArviZ ----------------------------------------------------------------------

    @property
    def idata(self) -> Any:
        """An arviz.InferenceData (built once)."""
        if self._idata is None:
            import arviz as az

            c, d = self.num_chains, self.num_draws
            stats = {}
            for k, v in self.stats.items():
                name = STAT_NAMES.get(k, k)
                stats[name] = np.broadcast_to(v[:, None], (c, d)) if v.ndim == 1 else v
            self._idata = az.from_dict(
                posterior=self.samples, sample_stats=stats or None,
                log_likelihood=self.log_likelihood or None,
                observed_data=self.observed_data or None,
                posterior_attrs={"kiln_placement": json.dumps(self.placement, default=str),
                                 "kiln_warnings": json.dumps(self.run_warnings),
                                 "kiln_chain_ids": json.dumps(self.chain_ids)})
        return self._idata

    def summary(self, **kwargs: Any) -> Any:
        """arviz.summary: mean, sd, hdi_3%, hdi_97%, mcse, ess_bulk, ess_tail, r_hat.

        Unrounded (ArviZ rounds to 2 decimals by default, which shows an MCSE of 1.4e-5 as
        0.000 and an R-hat of 1.0084 as 1.01): every digit needed to judge convergence.
        `round_to=` as in ArviZ.
        """
        import arviz as az

        kwargs.setdefault("round_to", "none")
        return az.summary(self.idata, **kwargs)

    def plot_trace(self, **kwargs: Any) -> Any:
        import arviz as az

        return az.plot_trace(self.idata, **kwargs)

    def plot_pair(self, **kwargs: Any) -> Any:
        import arviz as az

        return az.plot_pair(self.idata, **kwargs)

    def waic(self, var_name: str | None = None, **kwargs: Any) -> Any:
        """WAIC from the recorded pointwise log-likelihood (name the site when there are several)."""
        import arviz as az

        return az.waic(self.idata, var_name=var_name or self._one_loglik(), **kwargs)

    def loo(self, var_name: str | None = None, **kwargs: Any) -> Any:
        """PSIS-LOO from the recorded pointwise log-likelihood."""
        import arviz as az

        return az.loo(self.idata, var_name=var_name or self._one_loglik(), **kwargs)

    def _one_loglik(self) -> str:
        from ..errors import SamplingError, SpecError

        if not self.log_likelihood:
            raise SamplingError("no log-likelihood was recorded (the model has no observation, "
                                "or it was sampled with log_likelihood=False)")
        if len(self.log_likelihood) > 1:
            names = ", ".join(repr(k) for k in self.log_likelihood)
            raise SpecError("var_name", f"the model has {len(self.log_likelihood)} likelihood "
                            f"sites ({names}); name the one to use, e.g. "
                            f"var_name={next(iter(self.log_likelihood))!r}")
        return next(iter(self.log_likelihood))

    # -- files --------------------------------------------------------------------

    def save(self, path: str) -> str:
        """Write the InferenceData (with placement and warnings) to NetCDF."""
        self.idata.to_netcdf(str(path))
        return str(path)

    # -- display ------------------------------------------------------------------

    def __repr__(self) -> str:
        names = ", ".join(f"{k}{list(v.shape[2:]) or ''}" for k, v in self.samples.items())
        nodes = sorted({str(p["node"]) for p in self.placement if p.get("node")})
        where = f" on {', '.join(nodes)}" if nodes else ""
        warn = f", {len(self.warnings)} warning(s)" if self.warnings else ""
        return f"<Posterior {self.num_chains} chains x {self.num_draws} draws: {names}{where}{warn}>"

    def _repr_html_(self) -> str:
        table = self.summary().to_html(float_format=lambda x: f"{x:.4g}")
        head = (f"<p><b>Posterior</b>: {self.num_chains} chains &times; {self.num_draws} draws"
                + "".join(f"<br>&#9888; {w}" for w in self.warnings) + "</p>")
        return head + table


def load(path: str) -> Posterior:
    """A Posterior from a file written by `Posterior.save`."""
    import arviz as az

    idata = az.from_netcdf(str(path))
    post = idata.posterior
    samples = {k: np.asarray(post[k].values) for k in post.data_vars}
    inverse = {v: k for k, v in STAT_NAMES.items()}
    stats = {}
    if "sample_stats" in idata.groups():
        for k in idata.sample_stats.data_vars:
            v = np.asarray(idata.sample_stats[k].values)
            stats[inverse.get(k, k)] = v[:, 0] if k in ("step_size", "max_tree_depth") else v
    loglik = ({k: np.asarray(idata.log_likelihood[k].values) for k in idata.log_likelihood.data_vars}
              if "log_likelihood" in idata.groups() else {})
    obs = ({k: np.asarray(idata.observed_data[k].values) for k in idata.observed_data.data_vars}
           if "observed_data" in idata.groups() else {})
    attrs = post.attrs
    p = Posterior(samples, stats, loglik, obs,
                  placement=json.loads(attrs.get("kiln_placement", "[]")),
                  warnings=json.loads(attrs.get("kiln_warnings", "[]")),
                  chain_ids=json.loads(attrs.get("kiln_chain_ids", "null")))
    p._idata = idata
    return p


def from_result(result: dict[str, Any], observed_data: dict[str, np.ndarray] | None = None) -> Posterior:
    """A Posterior from one engine/worker result (in-process use, tests, benchmarks)."""
    return Posterior(result["samples"], result["stats"], result.get("log_likelihood"),
                     observed_data, placement=[{
                         "chains": result.get("chains"), "node": result.get("node"),
                         "device": result.get("device"), "device_reason": result.get("device_reason"),
                         **result.get("timing", {})}],
                     warnings=list(result.get("warnings", [])), timing=result.get("timing"),
                     chain_ids=result.get("chains"))
