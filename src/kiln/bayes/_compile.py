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
from ._dist import Args, spec_of, unpickle_fn
from ._expr import OPS, evaluate, is_array_node, is_number

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
            op = OPS.get(node["op"])
            index = bool(op and op.index_args)
            out = {**node, "args": [walk(a, as_index=index and i > 0)
                                    for i, a in enumerate(node["args"])]}
            for key in op.subgraphs if op else ():
                if key in node:
                    out[key] = walk(node[key])
            if isinstance(node.get("dist"), dict):
                out["dist"] = walk_dist(node["dist"])
            return out
        return node

    def walk_dist(d: dict[str, Any]) -> dict[str, Any]:
        spec = spec_of(d)
        out: dict[str, Any] = {}
        for k, v in d.items():
            if k == "dist" or k in spec.statics:
                out[k] = v
            elif k in spec.children:
                out[k] = walk_dist(v)
            elif k == spec.child_list:
                out[k] = [walk_dist(c) for c in v]
            elif spec.free_params and k == "params":
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
                if isinstance(e.get("constraint"), dict):
                    e2["constraint"] = {k: walk(v) for k, v in e["constraint"].items()}
            elif e["kind"] in ("det", "factor"):
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

    from ._validate import entry_refs, topo_order

    by_name = {e["name"]: e for e in structure["entries"]}
    deps = {n: set().union(*d.values()) if (d := entry_refs(e)) else set()
            for n, e in by_name.items()}
    order = topo_order(by_name, deps)
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
            elif kind == "factor":
                numpyro.factor(name, jnp.sum(evaluate(e["expr"], env, jnp, const)))
            elif kind == "rv" and name in obs_of:
                o = obs_of[name]
                value = consts[o["value"]["const"]]
                d = make_dist(e["dist"], env, const, tuple(value.shape))
                env[name] = numpyro.sample(o["name"], d, obs=value)
            elif kind == "rv":
                shape = tuple(e["shape"]) if e.get("shape") is not None else None
                d = make_dist(e["dist"], env, const, shape)
                if e.get("constraint") is not None:
                    d = _constrained(d, e["constraint"], env, const)
                env[name] = numpyro.sample(name, d)
    return model


def _constrained(d: Any, c: Any, env: dict[str, Any], const: Callable[[Any], Any]) -> Any:
    """`d`'s density on a declared constraint (_constraints.py)."""
    import jax.numpy as jnp
    from numpyro.distributions import constraints

    from . import _numpyro_dists as kd
    from ._constraints import CONSTRAINTS, make_bounds

    if isinstance(c, dict):
        lo, hi = (evaluate(c[k], env, jnp, const) if k in c else None for k in ("lower", "upper"))
        return kd.Constrained(d, make_bounds(constraints, lo, hi), len(d.event_shape))
    spec = CONSTRAINTS[c]
    return kd.Constrained(d, spec.make(constraints), spec.event_ndim)


def make_dist(node: dict[str, Any], env: dict[str, Any], const: Callable[[Any], Any],
              shape: tuple[int, ...] | None, slots: Any = None) -> Any:
    """The NumPyro distribution of a distribution node, expanded to `shape`."""
    import jax.numpy as jnp

    from . import _numpyro_dists as kd

    spec = spec_of(node)
    if spec is None:
        raise ModelError(None, "dist", f"unknown distribution {node.get('dist')!r}")
    values: dict[str, Any] = {"shape": shape}
    for k, v in node.items():
        if k == "dist":
            continue
        if k in spec.statics:
            values[k] = v
        elif k in spec.children:
            values[k] = make_dist(v, env, const, None, slots)
        elif k == spec.child_list:
            values[k] = [make_dist(c, env, const, None, slots) for c in v]
        elif spec.free_params and k == "params":
            values[k] = {pk: evaluate(pv, env, jnp, const, slots) for pk, pv in v.items()}
        else:
            values[k] = evaluate(v, env, jnp, const, slots)
    d = spec.make(kd, Args(values))
    if shape is not None:
        event = d.event_shape
        batch = shape[:len(shape) - len(event)] if event else shape
        if tuple(d.batch_shape) != tuple(batch):
            d = d.expand(batch)
    return d


def compile_model(structure: dict[str, Any], consts: list[Any]) -> Compiled:
    """Trace the model once (with these constants) to learn its sites and shapes."""
    import jax
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

    latent, observed, deterministic = {}, {}, {}
    zeros = {}

    def sites(c: Any) -> int:
        # traced abstractly (jax.eval_shape): only shapes are needed, so nothing runs or
        # compiles here (an ODE solve or a long scan would otherwise be compiled twice)
        tr = handlers.trace(handlers.substitute(handlers.seed(model, 0), substitute_fn=at_zero)
                            ).get_trace(c)
        for name, site in tr.items():
            if site["type"] == "sample" and not site["is_observed"]:
                latent[name] = tuple(site["value"].shape)
                t = biject_to(site["fn"].support)
                zeros[name] = tuple(t.inverse_shape(site["value"].shape))
            elif site["type"] == "sample" and not site["infer"].get("is_auxiliary"):
                observed[name] = tuple(jnp.shape(site["value"]))   # not a factor: a likelihood
            elif site["type"] == "deterministic":
                deterministic[name] = tuple(jnp.shape(site["value"]))
        return 0

    jax.eval_shape(sites, consts)
    zeros = {name: jnp.zeros(shape) for name, shape in zeros.items()}
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
