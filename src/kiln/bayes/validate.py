"""Validation of a model's entries on the driver, before any agent is called.

Pure Python and numpy. Every problem is a `kiln.errors.ModelError` subclass that names
the variable and the field (`sigma.dist.sigma: ...`). `validate` also returns what the
compiler needs from the same walk: a topological order and every name's shape.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..errors import (
    CycleError,
    DataError,
    DomainError,
    ModelError,
    ModelTypeError,
    ShapeError,
    UnknownReferenceError,
)
from .distributions import KNOWN, SPECS, Custom, DistSpec
from .expr import check_node, const_array, infer_shape, is_array_node, refs

KINDS = ("rv", "obs", "det", "data")


class Checked(NamedTuple):
    order: list[str]                   # rv / det / data / obs names, dependencies first
    shapes: dict[str, tuple[int, ...]]  # value shape of every name (observed rv: its data's)
    observed: dict[str, str]           # rv name -> obs name


def validate(entries: list[dict[str, Any]]) -> Checked:
    by_name: dict[str, dict[str, Any]] = {}
    for e in entries:
        kind, name = e.get("kind"), e.get("name")
        if kind not in KINDS:
            raise ModelError(name if isinstance(name, str) else None, "kind",
                             f"{kind!r} is not one of {', '.join(KINDS)}")
        if not isinstance(name, str) or not name:
            raise ModelTypeError(None, "name", f"{name!r:.60} is not a variable name")
        if name in by_name:
            raise ModelError(name, "name", "defined twice")
        by_name[name] = e

    observed: dict[str, str] = {}
    for e in entries:
        _check_entry_nodes(e)
        if e["kind"] == "obs":
            of = e.get("of")
            if of not in by_name or by_name[of]["kind"] != "rv":
                raise UnknownReferenceError(e["name"], "of", f"{of!r} is not a random variable "
                                            f"of the model; random variables: {_names(by_name, 'rv')}")
            if of in observed:
                from ..errors import DuplicateObservationError
                raise DuplicateObservationError(of, "obs", f"observed twice: by {observed[of]!r} "
                                                f"and {e['name']!r}")
            observed[of] = e["name"]

    deps = {name: _entry_refs(e) for name, e in by_name.items()}
    for name, (field_refs) in deps.items():
        for fld, rs in field_refs.items():
            for r in sorted(rs):
                if r not in by_name or by_name[r]["kind"] == "obs":
                    raise UnknownReferenceError(
                        name, fld, f"refers to {r!r}, which is not a variable or data of the model; "
                        f"known: {', '.join(n for n, x in by_name.items() if x['kind'] != 'obs') or '(none)'}")
    order = _topo_order(by_name, {n: set().union(*d.values()) if d else set() for n, d in deps.items()})

    shapes: dict[str, tuple[int, ...]] = {}
    for name in order:
        e = by_name[name]
        if e["kind"] == "data":
            shapes[name] = np.asarray(e["value"]["array"]).shape
        elif e["kind"] == "det":
            shapes[name] = _expr_shape(name, "expr", e["expr"], shapes)
        elif e["kind"] == "rv":
            obs = by_name[observed[name]] if name in observed else None
            shapes[name] = _check_rv(e, obs, shapes)
    for name in order:
        if by_name[name]["kind"] == "obs":
            shapes[name] = shapes[by_name[name]["of"]]
    _check_indices(by_name, shapes)
    return Checked(order, shapes, observed)


def _names(by_name: dict[str, Any], kind: str) -> str:
    return ", ".join(n for n, e in by_name.items() if e["kind"] == kind) or "(none)"


def _dist_fields(dist: dict[str, Any], prefix: str = "dist") -> list[tuple[str, Any]]:
    """(field path, node) of every parameter of a distribution node, wrappers included."""
    name = dist.get("dist")
    out: list[tuple[str, Any]] = []
    if name == "Censored":
        out += _dist_fields(dist.get("base", {}), prefix + ".base")
        out += [(f"{prefix}.{k}", dist[k]) for k in ("lower", "upper") if k in dist]
    elif name == "Mixture":
        out.append((prefix + ".weights", dist.get("weights")))
        for i, c in enumerate(dist.get("components", [])):
            out += _dist_fields(c, f"{prefix}.components[{i}]")
    elif name == "Custom":
        out += [(f"{prefix}.params.{k}", v) for k, v in dist.get("params", {}).items()]
    else:
        out += [(f"{prefix}.{k}", v) for k, v in dist.items() if k != "dist"]
    return out


def _check_dist_node(var: str, dist: Any, prefix: str = "dist") -> None:
    if not isinstance(dist, dict) or not isinstance(dist.get("dist"), str):
        raise ModelTypeError(var, prefix, f"{dist!r:.60} is not a distribution")
    name = dist["dist"]
    if name not in KNOWN:
        raise ModelTypeError(var, prefix, f"unknown distribution {name!r}; known: {', '.join(KNOWN)}")
    if name == "Censored":
        _check_dist_node(var, dist.get("base"), prefix + ".base")
        if SPECS.get(dist["base"]["dist"]) is None or SPECS[dist["base"]["dist"]].event_ndim:
            raise ModelTypeError(var, prefix + ".base", "Censored wraps a univariate distribution")
        extra = set(dist) - {"dist", "base", "lower", "upper"}
    elif name == "Mixture":
        comps = dist.get("components")
        if not isinstance(comps, list) or not comps:
            raise ModelTypeError(var, prefix + ".components", "a non-empty list of distributions")
        supports = set()
        for i, c in enumerate(comps):
            _check_dist_node(var, c, f"{prefix}.components[{i}]")
            spec = SPECS.get(c["dist"])
            if spec is None or spec.event_ndim or spec.support in ("interval", "truncated"):
                raise ModelTypeError(var, f"{prefix}.components[{i}]",
                                     "mixture components are univariate distributions with a "
                                     "fixed support")
            supports.add(spec.support)
        if len(supports) > 1:
            raise ModelTypeError(var, prefix + ".components",
                                 f"components have different supports ({', '.join(sorted(supports))})")
        extra = set(dist) - {"dist", "weights", "components"}
    elif name == "Custom":
        if not isinstance(dist.get("logp"), dict) or "pickle" not in dist["logp"]:
            raise ModelTypeError(var, prefix + ".logp", "a pickled function")
        if dist.get("support") not in Custom.SUPPORTS:
            raise ModelTypeError(var, prefix + ".support", f"{dist.get('support')!r}; one of "
                                 f"{', '.join(Custom.SUPPORTS)}")
        if not isinstance(dist.get("params"), dict):
            raise ModelTypeError(var, prefix + ".params", "a dict of parameters")
        extra = set(dist) - {"dist", "logp", "support", "params"}
    else:
        spec = SPECS[name]
        names = {p.name for p in spec.params}
        for p in spec.params:
            if not p.optional and p.name not in dist:
                raise ModelTypeError(var, f"{prefix}.{p.name}", f"missing parameter of {name}")
        if spec.one_of and sum(k in dist for k in spec.one_of) != 1:
            raise ModelTypeError(var, prefix, f"{name} takes exactly one of "
                                 f"{' or '.join(spec.one_of)}")
        extra = set(dist) - names - {"dist"}
    if extra:
        raise ModelTypeError(var, f"{prefix}.{sorted(extra)[0]}", f"{name} has no such parameter")


def _check_entry_nodes(e: dict[str, Any]) -> None:
    name, kind = e["name"], e["kind"]
    if kind == "rv":
        _check_dist_node(name, e.get("dist"))
        for fld, node in _dist_fields(e["dist"]):
            why = check_node(node)
            if why:
                raise ModelTypeError(name, fld, why)
        shape = e.get("shape")
        if shape is not None and (not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)):
            raise ModelTypeError(name, "shape", f"{shape!r:.60} is not a list of positive ints")
    elif kind == "det":
        why = check_node(e.get("expr"))
        if why:
            raise ModelTypeError(name, "expr", why)
    else:
        v = e.get("value")
        if not is_array_node(v):
            raise ModelTypeError(name, "value", "an array node")
        why = check_node(v)
        if why:
            raise DataError(name, "value", why)


def _entry_refs(e: dict[str, Any]) -> dict[str, set[str]]:
    if e["kind"] == "rv":
        return {fld: refs(node) for fld, node in _dist_fields(e["dist"])}
    if e["kind"] == "det":
        return {"expr": refs(e["expr"])}
    return {}


def _topo_order(by_name: dict[str, Any], deps: dict[str, set[str]]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(n: str, path: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cyc = path[path.index(n):] + [n]
            raise CycleError(n, _field_of(by_name[n], cyc[1] if len(cyc) > 1 else n),
                             "variables refer to each other in a cycle: " + " -> ".join(cyc))
        state[n] = 1
        for d in sorted(deps.get(n, ())):
            visit(d, path + [n])
        state[n] = 2
        order.append(n)

    for n in by_name:
        visit(n, [])
    return order


def _field_of(e: dict[str, Any], ref: str) -> str | None:
    for fld, rs in _entry_refs(e).items():
        if ref in rs:
            return fld
    return None


def _expr_shape(var: str, fld: str, node: Any, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    try:
        return infer_shape(node, shapes)
    except ValueError as e:
        raise ShapeError(var, fld, str(e)) from None


def _check_rv(e: dict[str, Any], obs: dict[str, Any] | None,
              shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    name, dist = e["name"], e["dist"]
    dname = dist["dist"]
    if dname == "Censored" and obs is None:
        raise ModelTypeError(name, "dist", "a Censored variable must be observed (.obs)")
    spec = SPECS.get(dname)
    base_spec = SPECS.get(dist["base"]["dist"]) if dname == "Censored" else spec
    discrete = bool(base_spec and base_spec.discrete) or (
        dname == "Mixture" and SPECS[dist["components"][0]["dist"]].discrete)
    if discrete and obs is None:
        raise ModelTypeError(name, "dist", f"{dname} is discrete and NUTS samples continuous "
                             "variables only: observe it, or marginalise it out (Mixture)")
    batch, event = _dist_shape(name, "dist", dist, shapes, e.get("shape"))
    natural = batch + event
    declared = tuple(e["shape"]) if e.get("shape") is not None else None
    if declared is not None:
        try:
            ok = tuple(np.broadcast_shapes(natural, declared)) == declared
        except ValueError:
            ok = False
        if not ok:
            raise ShapeError(name, "shape", f"declared shape {declared} but the parameters "
                             f"give shape {natural}")
        natural = declared
    if obs is None:
        return natural
    data = np.asarray(obs["value"]["array"], dtype=np.dtype(obs["value"]["dtype"]))
    try:
        ok = tuple(np.broadcast_shapes(natural, data.shape)) == data.shape
    except ValueError:
        ok = False
    if not ok:
        raise ShapeError(obs["name"], "value", f"observed data of shape {data.shape} does not "
                         f"match {name!r}, whose shape is {natural}")
    _check_support(obs["name"], data, dist, shapes)
    return data.shape


def _dist_shape(var: str, prefix: str, dist: dict[str, Any], shapes: dict[str, tuple[int, ...]],
                declared: list[int] | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(batch shape, event shape) of a distribution node; checks constant domains."""
    dname = dist["dist"]
    if dname == "Censored":
        b, ev = _dist_shape(var, prefix + ".base", dist["base"], shapes, declared)
        for k in ("lower", "upper"):
            if k in dist:
                s = _expr_shape(var, f"{prefix}.{k}", dist[k], shapes)
                b = _broadcast(var, f"{prefix}.{k}", b, s)
        return b, ev
    if dname == "Mixture":
        w = _expr_shape(var, prefix + ".weights", dist["weights"], shapes)
        if not w or w[-1] != len(dist["components"]):
            raise ShapeError(var, prefix + ".weights", f"shape {w}: needs a last dimension of "
                             f"{len(dist['components'])} (one weight per component)")
        _check_domain(var, prefix + ".weights", dist["weights"], "simplex")
        b = w[:-1]
        for i, c in enumerate(dist["components"]):
            cb, _ = _dist_shape(var, f"{prefix}.components[{i}]", c, shapes, None)
            b = _broadcast(var, f"{prefix}.components[{i}]", b, cb)
        return b, ()
    if dname == "Custom":
        b: tuple[int, ...] = ()
        for k, node in dist["params"].items():
            b = _broadcast(var, f"{prefix}.params.{k}", b,
                           _expr_shape(var, f"{prefix}.params.{k}", node, shapes))
        return b, ()
    spec: DistSpec = SPECS[dname]
    batch: tuple[int, ...] = ()
    event: tuple[int, ...] = ()
    for p in spec.params:
        if p.name not in dist:
            continue
        fld = f"{prefix}.{p.name}"
        s = _expr_shape(var, fld, dist[p.name], shapes)
        if len(s) < p.event_ndim:
            raise ShapeError(var, fld, f"shape {s}: {dname}'s {p.name} needs at least "
                             f"{p.event_ndim} dimension(s)")
        if p.event_ndim:
            ev = s[len(s) - p.event_ndim:]
            if p.event_ndim == 2 and ev[0] != ev[1]:
                raise ShapeError(var, fld, f"shape {s}: not square")
            if event and ev[0] != event[0]:
                raise ShapeError(var, fld, f"event size {ev[0]} differs from {event[0]}")
            event = event or ev[:1]
        batch = _broadcast(var, fld, batch, s[:len(s) - p.event_ndim])
        _check_domain(var, fld, dist[p.name], p.domain)
    if dname == "Uniform" or dname == "TruncatedNormal":
        lo, hi = const_array(dist.get("lower")), const_array(dist.get("upper"))
        if lo is not None and hi is not None and np.any(lo >= hi):
            raise DomainError(var, prefix + ".upper", "upper must be greater than lower")
    if spec.needs_shape:
        if not declared:
            raise ShapeError(var, "shape", f"{dname} needs shape=(T,) (the number of steps)")
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
        raise DomainError(var, fld, f"{_DOMAIN_TEXT[domain]}, got {np.array2string(np.asarray(shown), threshold=6)}")


def _check_support(obs: str, data: np.ndarray, dist: dict[str, Any],
                   shapes: dict[str, tuple[int, ...]]) -> None:
    d = dist["base"] if dist["dist"] == "Censored" else dist
    if d["dist"] == "Mixture":
        d = d["components"][0]
    spec = SPECS.get(d["dist"])
    if spec is None:
        return
    s, x = spec.support, data.astype(np.float64)
    why = None
    if s == "positive" and np.any(x <= 0) and dist["dist"] != "Censored":
        why = "must be > 0"
    elif s == "unit_interval" and np.any((x <= 0) | (x >= 1)):
        why = "must be in (0, 1)"
    elif s == "boolean" and np.any((x != 0) & (x != 1)):
        why = "must be 0 or 1"
    elif s in ("count", "bounded_count") and np.any((x < 0) | (x != np.round(x))):
        why = "must be non-negative integers"
    elif s == "simplex" and not np.allclose(x.sum(-1), 1.0):
        why = "must sum to 1 along the last axis"
    if why:
        raise DataError(obs, "value", f"observed {d['dist']} data {why}")
    if s == "bounded_count":
        n = const_array(d.get("n"))
        if n is not None and np.any(x > n):
            raise DataError(obs, "value", "observed Binomial data exceeds n")


def _check_indices(by_name: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
    """Constant index arrays must be integers inside the indexed axis."""
    def walk(var: str, fld: str, node: Any) -> None:
        if isinstance(node, dict) and "op" in node:
            for a in node["args"]:
                walk(var, fld, a)
            if node["op"] == "index":
                x, idx = node["args"]
                vals = const_array(idx) if not isinstance(idx, str) else (
                    np.asarray(by_name[idx]["value"]["array"]) if by_name[idx]["kind"] == "data"
                    else None)
                if isinstance(idx, str) and by_name[idx]["kind"] != "data":
                    raise ModelTypeError(var, fld, f"index {idx!r} must be integer data")
                if isinstance(idx, int) and not isinstance(idx, bool):
                    vals = np.asarray(idx)   # x[0]: a literal integer index
                elif vals is not None:
                    if not (is_array_node(idx) and idx["dtype"] == "int64") and not (
                            isinstance(idx, str) and by_name[idx]["value"]["dtype"] == "int64"):
                        raise ModelTypeError(var, fld, "an index must be an integer array")
                if vals is not None:
                    n = infer_shape(x, shapes)[0]
                    if vals.size and (vals.min() < 0 or vals.max() >= n):
                        raise ShapeError(var, fld, f"index values must be in [0, {n - 1}] "
                                         f"(0-based), got {vals.min()}..{vals.max()}")

    for name, e in by_name.items():
        if e["kind"] == "rv":
            for fld, node in _dist_fields(e["dist"]):
                walk(name, fld, node)
        elif e["kind"] == "det":
            walk(name, "expr", e["expr"])
