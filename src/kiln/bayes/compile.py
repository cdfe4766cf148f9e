"""Compile a model (the JSON IR, or a NumPyro function) into what the sampler needs.

The agent, not the driver, runs this. The IR is split into its *structure* (the entries
with every number and array replaced by a placeholder) and its *constants* (a list of
arrays). The structure, with the constants' shapes and dtypes, is the cache key of the
compiled program; the constants are its arguments, so new parameter values or new data
of the same shape reuse the compiled program.

`compile_model` returns a `Compiled`: the NumPyro model as `model(consts)`, the log
density over a flat unconstrained vector (`logdensity(z, consts)`, Jacobians included,
via `numpyro.infer.util.potential_energy`), and `postprocess(z, consts)` which gives the
constrained values, deterministics and pointwise log-likelihood of each draw.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ..errors import ModelError
from .distributions import unpickle_fn
from .expr import evaluate, is_array_node, is_number

NUMPYRO_FORMAT = "kiln.numpyro/1"


class Split(NamedTuple):
    key: str                  # hash of structure + constant shapes/dtypes
    structure: dict[str, Any]
    consts: list[np.ndarray]


def split_constants(model: dict[str, Any]) -> Split:
    """Replace every constant of the IR by `{"const": i}`; return the constants apart."""
    consts: list[np.ndarray] = []

    def put(arr: np.ndarray) -> dict[str, Any]:
        consts.append(arr)
        return {"const": len(consts) - 1, "shape": list(arr.shape), "dtype": str(arr.dtype)}

    def walk(node: Any, as_index: bool = False) -> Any:
        if is_number(node):
            # scalars are float parameters, except an integer used as an index
            if as_index and isinstance(node, int):
                return put(np.asarray(node, dtype=np.int64))
            return put(np.asarray(float(node), dtype=np.float64))
        if is_array_node(node):
            return put(np.asarray(node["array"], dtype=np.dtype(node["dtype"])))
        if isinstance(node, dict) and "op" in node:
            args = [walk(a, as_index=(node["op"] == "index" and i == 1))
                    for i, a in enumerate(node["args"])]
            return {**node, "args": args}
        if isinstance(node, dict) and "dist" in node:
            return walk_dist(node)
        return node

    def walk_dist(d: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if k == "dist" or k == "support" or k == "logp":
                out[k] = v
            elif k == "base":
                out[k] = walk_dist(v)
            elif k == "components":
                out[k] = [walk_dist(c) for c in v]
            elif k == "params":
                out[k] = {pk: walk(pv) for pk, pv in v.items()}
            else:
                out[k] = walk(v)
        return out

    if model.get("format") == NUMPYRO_FORMAT:
        data = model.get("data") or {}
        names = sorted(data)
        structure = {"format": NUMPYRO_FORMAT, "fn": model["fn"],
                     "data": {n: put(np.asarray(data[n])) for n in names}}
    else:
        entries = []
        for e in model["entries"]:
            e2 = dict(e)
            if e["kind"] == "rv":
                e2["dist"] = walk_dist(e["dist"])
            elif e["kind"] == "det":
                e2["expr"] = walk(e["expr"])
            else:
                e2["value"] = put(np.asarray(e["value"]["array"], dtype=np.dtype(e["value"]["dtype"])))
            entries.append(e2)
        structure = {"format": model.get("format"), "entries": entries}
    text = json.dumps(structure, sort_keys=True)
    return Split(hashlib.sha256(text.encode()).hexdigest()[:24], structure, consts)


class Compiled(NamedTuple):
    model: Callable[[Any], Any]                 # NumPyro model: model(consts)
    latent: dict[str, tuple[int, ...]]          # constrained shapes of sampled sites
    observed: dict[str, tuple[int, ...]]        # obs site -> data shape
    deterministic: dict[str, tuple[int, ...]]
    dim: int                                    # size of the flat unconstrained vector
    unravel: Callable[[Any], dict[str, Any]]
    ravel: Callable[[dict[str, Any]], Any]
    logdensity: Callable[[Any, Any], Any]       # (z_flat, consts) -> log p(z), Jacobian included
    postprocess: Callable[[Any, Any], tuple[dict[str, Any], dict[str, Any]]]
    unconstrain: Callable[[dict[str, Any], Any], Any]  # constrained values -> z_flat


def numpyro_model(structure: dict[str, Any]) -> Callable[[Any], Any]:
    """The NumPyro model function of an IR structure (or the user's function)."""
    if structure.get("format") == NUMPYRO_FORMAT:
        fn = unpickle_fn(structure["fn"])
        names = sorted(structure["data"])

        def user_model(consts: Any) -> Any:
            return fn(**dict(zip(names, consts, strict=True)))
        return user_model

    import numpyro

    from .validate import _entry_refs, _topo_order

    by_name = {e["name"]: e for e in structure["entries"]}
    deps = {n: set().union(*d.values()) if (d := _entry_refs(e)) else set()
            for n, e in by_name.items()}
    order = _topo_order(by_name, deps)
    obs_of = {e["of"]: e for e in structure["entries"] if e["kind"] == "obs"}

    def model(consts: Any) -> None:
        import jax.numpy as jnp

        def const(node: Any) -> Any:
            return consts[node["const"]]

        env: dict[str, Any] = {}
        for name in order:
            e = by_name[name]
            kind = e["kind"]
            if kind == "data":
                env[name] = consts[e["value"]["const"]]
            elif kind == "det":
                env[name] = numpyro.deterministic(name, evaluate(e["expr"], env, jnp, const))
            elif kind == "rv":
                shape = tuple(e["shape"]) if e.get("shape") is not None else None
                if name in obs_of:
                    o = obs_of[name]
                    value = consts[o["value"]["const"]]
                    d = make_dist(e["dist"], env, const, tuple(value.shape))
                    env[name] = numpyro.sample(o["name"], d, obs=value)
                else:
                    d = make_dist(e["dist"], env, const, shape)
                    env[name] = numpyro.sample(name, d)
    return model


def make_dist(node: dict[str, Any], env: dict[str, Any], const: Callable[[Any], Any],
              shape: tuple[int, ...] | None) -> Any:
    """The NumPyro distribution of a distribution node, expanded to `shape`."""
    import jax.numpy as jnp
    import numpyro.distributions as nd
    from numpyro.distributions import constraints

    from . import _numpyro_dists as kd

    name = node["dist"]

    def p(k: str) -> Any:
        return evaluate(node[k], env, jnp, const) if k in node else None

    if name == "Normal":
        d = nd.Normal(p("mu"), p("sigma"))
    elif name == "HalfNormal":
        d = nd.HalfNormal(p("sigma"))
    elif name == "Exponential":
        d = nd.Exponential(p("rate"))
    elif name == "Gamma":
        d = nd.Gamma(p("alpha"), p("beta"))
    elif name == "Beta":
        d = nd.Beta(p("alpha"), p("beta"))
    elif name == "Uniform":
        d = nd.Uniform(p("lower"), p("upper"))
    elif name == "StudentT":
        d = nd.StudentT(p("nu"), p("mu"), p("sigma"))
    elif name == "Cauchy":
        d = nd.Cauchy(p("mu"), p("sigma"))
    elif name == "HalfCauchy":
        d = nd.HalfCauchy(p("sigma"))
    elif name == "LogNormal":
        d = nd.LogNormal(p("mu"), p("sigma"))
    elif name == "Laplace":
        d = nd.Laplace(p("mu"), p("b"))
    elif name == "MvNormal":
        d = nd.MultivariateNormal(p("mu"), covariance_matrix=p("cov"))
    elif name == "GaussianRandomWalk":
        assert shape is not None, "validated: GaussianRandomWalk has a shape"
        d = nd.GaussianRandomWalk(p("sigma"), num_steps=shape[-1])
    elif name == "Dirichlet":
        d = nd.Dirichlet(p("alpha"))
    elif name == "Bernoulli":
        d = nd.Bernoulli(probs=p("p")) if "p" in node else nd.Bernoulli(logits=p("logit_p"))
    elif name == "Binomial":
        d = (nd.Binomial(p("n"), probs=p("p")) if "p" in node
             else nd.Binomial(p("n"), logits=p("logit_p")))
    elif name == "Poisson":
        d = nd.Poisson(p("rate"))
    elif name == "Weibull":
        d = nd.Weibull(scale=p("beta"), concentration=p("alpha"))
    elif name == "TruncatedNormal":
        d = nd.TruncatedNormal(p("mu"), p("sigma"), low=p("lower"), high=p("upper"))
    elif name == "Flat":
        d = nd.ImproperUniform(constraints.real, (), ())
    elif name == "HalfFlat":
        d = nd.ImproperUniform(constraints.positive, (), ())
    elif name == "Censored":
        d = kd.Censored(make_dist(node["base"], env, const, None), p("lower"), p("upper"))
    elif name == "Mixture":
        comps = [make_dist(c, env, const, None) for c in node["components"]]
        d = kd.Mixture(p("weights"), comps)
    elif name == "Custom":
        params = {k: evaluate(v, env, jnp, const) for k, v in node["params"].items()}
        d = kd.CustomLogp(unpickle_fn(node["logp"]["pickle"]), params, node["support"])
    else:
        raise ModelError(None, "dist", f"unknown distribution {name!r}")
    if shape is not None:
        event = d.event_shape
        batch = shape[:len(shape) - len(event)] if event else shape
        if tuple(d.batch_shape) != tuple(batch):
            d = d.expand(batch)
    return d


def compile_model(structure: dict[str, Any], consts: list[Any]) -> Compiled:
    """Trace the model once (with these constants) to learn its sites and shapes."""
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree
    from numpyro import handlers
    from numpyro.distributions.transforms import biject_to
    from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

    model = numpyro_model(structure)

    def at_zero(site: dict[str, Any]) -> Any:
        # the value at the origin of the unconstrained space: no sampling needed, so
        # improper priors and Custom log-densities trace like any other
        if site["type"] == "sample" and not site["is_observed"]:
            d = site["fn"]
            t = biject_to(d.support)
            return t(jnp.zeros(t.inverse_shape(d.shape())))
        return None

    tr = handlers.trace(handlers.substitute(handlers.seed(model, 0), substitute_fn=at_zero)
                        ).get_trace(consts)
    latent, observed, deterministic = {}, {}, {}
    zeros = {}
    for name, site in tr.items():
        if site["type"] == "sample" and not site["is_observed"]:
            latent[name] = tuple(site["value"].shape)
            t = biject_to(site["fn"].support)
            zeros[name] = jnp.zeros(t.inverse_shape(site["value"].shape))
        elif site["type"] == "sample":
            observed[name] = tuple(jnp.shape(site["value"]))
        elif site["type"] == "deterministic":
            deterministic[name] = tuple(jnp.shape(site["value"]))
    if not latent:
        raise ModelError(None, None, "the model has no unobserved random variable to sample")
    flat0, unravel = ravel_pytree(zeros)

    def ravel(tree: dict[str, Any]) -> Any:
        return ravel_pytree(tree)[0]

    def logdensity(z: Any, c: Any) -> Any:
        return -potential_energy(model, (c,), {}, unravel(z))

    def postprocess(z: Any, c: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        values = constrain_fn(model, (c,), {}, unravel(z), return_deterministic=True)
        t = handlers.trace(handlers.substitute(model, data=values)).get_trace(c)
        loglik = {n: t[n]["fn"].log_prob(t[n]["value"]) for n in observed}
        return values, loglik

    def unconstrain(values: dict[str, Any], c: Any) -> Any:
        return ravel(unconstrain_fn(model, (c,), {}, {k: jnp.asarray(v) for k, v in values.items()}))

    return Compiled(model, latent, observed, deterministic, int(flat0.size), unravel, ravel,
                    logdensity, postprocess, unconstrain)
