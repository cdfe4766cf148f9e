"""Checks of distribution nodes on the driver: structure, shapes, constant domains, data.

Read from each distribution's spec (`_dist.py`); nothing here names a distribution.
`_validate.py` calls these for every distribution of a model, those inside `logp` too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DataError, DomainError, ModelTypeError, ShapeError
from ._dist import REGISTRY, DistSpec, Param, dist_children, dist_params, root_spec, spec_of
from ._expr import Ctx, NodeError, const_array, infer_shape


def check_dist_node(var: str, dist: Any, prefix: str = "dist") -> None:
    """The structure of a distribution node: a known name, its parameters, its children."""
    if not isinstance(dist, dict) or not isinstance(dist.get("dist"), str):
        raise ModelTypeError(var, prefix, f"{dist!r:.60} is not a distribution")
    spec = spec_of(dist)
    if spec is None:
        raise ModelTypeError(var, prefix, f"unknown distribution {dist['dist']!r}; known: "
                             f"{', '.join(sorted(REGISTRY))}")
    name = spec.name
    for k in spec.children:
        if not isinstance(dist.get(k), dict):
            raise ModelTypeError(var, f"{prefix}.{k}", f"{name} wraps a distribution")
    if spec.child_list and (not isinstance(dist.get(spec.child_list), list)
                            or not dist[spec.child_list]):
        raise ModelTypeError(var, f"{prefix}.{spec.child_list}", "a non-empty list of distributions")
    if spec.check:
        spec.check(var, prefix, dist, {})
    for fld, child in dist_children(dist, prefix):
        check_dist_node(var, child, fld)
    if spec.free_params:
        return
    for p in spec.params:
        if not p.optional and p.name not in dist:
            raise ModelTypeError(var, f"{prefix}.{p.name}", f"missing parameter of {name}")
    if spec.one_of and sum(k in dist for k in spec.one_of) != 1:
        raise ModelTypeError(var, prefix, f"{name} takes exactly one of {' or '.join(spec.one_of)}")
    for k in spec.statics:
        if k not in dist:
            raise ModelTypeError(var, f"{prefix}.{k}", f"missing parameter of {name}")
    known = {p.name for p in spec.params} | {"dist", *spec.children, *spec.statics,
                                             spec.child_list}
    extra = set(dist) - known
    if extra:
        raise ModelTypeError(var, f"{prefix}.{sorted(extra)[0]}", f"{name} has no such parameter")


def shape_in(var: str, fld: str, node: Any, ctx: Ctx) -> tuple[int, ...]:
    try:
        return infer_shape(node, ctx)
    except NodeError as e:
        kind = {"type": ModelTypeError, "data": DataError}.get(e.kind, ShapeError)
        raise kind(var, fld, str(e)) from None


def support_of(dist: dict[str, Any]) -> str:
    """The support of a distribution node (a wrapper's is its base's)."""
    spec = spec_of(dist)
    while spec is not None and spec.support == "child":
        dist = dist_children(dist)[0][1]
        spec = spec_of(dist)
    if spec is None:
        return "real"
    return dist.get("support", "real") if spec.support == "custom" else spec.support


def discrete(dist: dict[str, Any]) -> bool:
    spec = spec_of(dist)
    if spec is not None and spec.support == "child":
        return discrete(dist_children(dist)[0][1])
    return bool(spec and spec.discrete)


def dist_shape(var: str, prefix: str, dist: dict[str, Any], ctx: Ctx,
                declared: list[int] | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(batch shape, event shape) of a distribution node; checks constant domains."""
    check_dist_node(var, dist, prefix)
    spec: DistSpec = spec_of(dist)
    params = {q.name: q for q in spec.params}
    batch: tuple[int, ...] = ()
    event: tuple[int, ...] = ()
    param_shapes: dict[str, tuple[int, ...]] = {}
    for fld, node in dist_params(dist, prefix):
        key = fld.rsplit(".", 1)[-1]
        q = params.get(key, Param(key))
        s = shape_in(var, fld, node, ctx)
        param_shapes[key] = s
        if len(s) < q.event_ndim:
            raise ShapeError(var, fld, f"shape {s}: {spec.name}'s {key} needs at least "
                             f"{q.event_ndim} dimension(s)")
        if q.event_ndim:
            ev = s[len(s) - q.event_ndim:]
            if q.event_ndim == 2 and ev[0] != ev[1]:
                raise ShapeError(var, fld, f"shape {s}: not square")
            if spec.event_ndim and spec.event is None:
                if event and ev[0] != event[0]:
                    raise ShapeError(var, fld, f"event size {ev[0]} differs from {event[0]}")
                event = event or ev[:1]
        batch = _broadcast(var, fld, batch, s[:len(s) - q.event_ndim])
        _check_domain(var, fld, node, q.domain)
    for fld, child in dist_children(dist, prefix):
        cb, ce = dist_shape(var, fld, child, ctx, declared)
        batch, event = _broadcast(var, fld, batch, cb), ce
    if spec.check:
        spec.check(var, prefix, dist, param_shapes)
    lo, hi = const_array(dist.get("lower")), const_array(dist.get("upper"))
    if "lower" in params and lo is not None and hi is not None and np.any(lo >= hi):
        raise DomainError(var, prefix + ".upper", "upper must be greater than lower")
    if spec.event is not None:
        event = spec.event(dist, param_shapes, declared)
    if spec.needs_shape:
        if not declared:
            raise ShapeError(var, "shape", f"{spec.name} needs shape=(T,) (the number of steps)")
        event = (declared[-1],)
        batch = _broadcast(var, "shape", batch, tuple(declared[:-1]))
    return batch, event


def _broadcast(var: str, fld: str, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(a, b))
    except ValueError:
        raise ShapeError(var, fld, f"shape {b} does not broadcast with {a} "
                         "(the shapes of the other parameters)") from None


_DOMAIN_TEXT = {
    "positive": "must be > 0", "nonnegative": "must be >= 0", "unit": "must be in [0, 1]",
    "count": "must be a non-negative integer", "simplex": "must be >= 0 and sum to 1 (last axis)",
    "posdef": "must be a symmetric positive-definite matrix",
}


def _check_domain(var: str, fld: str, node: Any, domain: str) -> None:
    v = const_array(node)
    if v is None or domain == "real":
        return
    v = v.astype(np.float64)
    if domain == "positive":
        bad = v <= 0
    elif domain == "nonnegative":
        bad = v < 0
    elif domain == "unit":
        bad = (v < 0) | (v > 1)
    elif domain == "count":
        bad = (v < 0) | (v != np.round(v))
    elif domain == "simplex":
        bad = np.array((v < 0).any() or not np.allclose(v.sum(-1), 1.0, atol=1e-6))
    elif domain == "posdef":
        try:
            np.linalg.cholesky(v)
            bad = np.array(not np.allclose(v, np.swapaxes(v, -1, -2)))
        except np.linalg.LinAlgError:
            bad = np.array(True)
    else:
        return
    if np.any(bad):
        shown = v if v.ndim == 0 else v[bad][0] if bad.ndim and bad.shape == v.shape else v
        raise DomainError(var, fld, f"{_DOMAIN_TEXT[domain]}, got "
                          f"{np.array2string(np.asarray(shown), threshold=6)}")


_SUPPORT_TEXT = {
    "positive": "must be > 0", "unit_interval": "must be in (0, 1)", "boolean": "must be 0 or 1",
    "count": "must be non-negative integers", "bounded_count": "must be non-negative integers",
    "count_vector": "must be non-negative integers",
    "categorical": "must be integers 0..K-1 (0-based)", "simplex": "must sum to 1 along the last axis",
}


def check_support(obs: str, data: np.ndarray, dist: dict[str, Any]) -> None:
    s, x = support_of(dist), data.astype(np.float64)
    at_bounds = spec_of(dist).observed_only   # censored data sit on the bound
    count = (x < 0) | (x != np.round(x))
    bad = {
        "positive": lambda: not at_bounds and np.any(x <= 0),
        "unit_interval": lambda: np.any((x <= 0) | (x >= 1)),
        "boolean": lambda: np.any((x != 0) & (x != 1)),
        "count": lambda: np.any(count), "bounded_count": lambda: np.any(count),
        "count_vector": lambda: np.any(count), "categorical": lambda: np.any(count),
        "simplex": lambda: not np.allclose(x.sum(-1), 1.0),
    }.get(s)
    if bad is not None and bad():
        raise DataError(obs, "value", f"observed {root_spec(dist).name} data {_SUPPORT_TEXT[s]}")
    if s == "bounded_count":
        n = const_array(dist.get("n"))
        if n is not None and np.any(x > n):
            raise DataError(obs, "value", "observed Binomial data exceeds n")
