"""Validation of a model's entries on the driver, before any agent is called.

Pure Python and numpy. Every problem is a `kiln.errors.ModelError` subclass that names
the variable and the field (`sigma.dist.sigma: ...`). `validate` also returns what the
compiler needs from the same walk: a topological order and every name's shape. The checks
of distribution nodes (read from their specs) are in `_check_dist.py`; what is likely not
what the modeller meant is a `ModelWarning` (`_warn.py`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..errors import (
    CycleError,
    DataError,
    DomainError,
    DuplicateObservationError,
    ModelError,
    ModelTypeError,
    ShapeError,
    UnknownReferenceError,
)
from ._check_dist import check_dist_node, check_support, discrete, dist_shape, shape_in, support_of
from ._constraints import BOUNDABLE, CONSTRAINTS
from ._dist import dist_fields, spec_of
from ._expr import Ctx, check_node, const_array, is_array_node, is_op, refs
from ._warn import warn_unlikely

KINDS = ("rv", "obs", "det", "data", "factor")


class Checked(NamedTuple):
    order: list[str]                   # rv / det / data / factor names, dependencies first
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
                raise DuplicateObservationError(of, "obs", f"observed twice: by {observed[of]!r} "
                                                f"and {e['name']!r}")
            observed[of] = e["name"]

    deps = {name: entry_refs(e) for name, e in by_name.items()}
    for name, field_refs in deps.items():
        for fld, rs in field_refs.items():
            for r in sorted(rs):
                if r not in by_name or by_name[r]["kind"] in ("obs", "factor"):
                    known = ", ".join(n for n, x in by_name.items()
                                      if x["kind"] not in ("obs", "factor")) or "(none)"
                    raise UnknownReferenceError(
                        name, fld, f"refers to {r!r}, which is not a variable or data of the "
                        f"model; known: {known}")
    order = topo_order(by_name, {n: set().union(*d.values()) if d else set()
                                 for n, d in deps.items()})

    shapes: dict[str, tuple[int, ...]] = {}
    data = {n: _array(e["value"]) for n, e in by_name.items() if e["kind"] == "data"}
    for name in order:
        e = by_name[name]
        if e["kind"] == "data":
            shapes[name] = data[name].shape
        elif e["kind"] in ("det", "factor"):
            shapes[name] = _expr_shape(name, "expr", e["expr"], shapes, data)
        elif e["kind"] == "rv":
            obs = by_name[observed[name]] if name in observed else None
            shapes[name] = _check_rv(e, obs, shapes, data)
    for name in order:
        if by_name[name]["kind"] == "obs":
            shapes[name] = shapes[by_name[name]["of"]]
    warn_unlikely(by_name, observed, support_of)
    return Checked(order, shapes, observed)


def _names(by_name: dict[str, Any], kind: str) -> str:
    return ", ".join(n for n, e in by_name.items() if e["kind"] == kind) or "(none)"


def _array(node: dict[str, Any]) -> np.ndarray:
    return np.asarray(node["array"], dtype=np.dtype(node["dtype"]))


# -- one entry at a time -------------------------------------------------------------------------

def _check_entry_nodes(e: dict[str, Any]) -> None:
    name, kind = e["name"], e["kind"]
    if kind == "rv":
        check_dist_node(name, e.get("dist"))
        for fld, node in dist_fields(e["dist"]):
            _check_expr(name, fld, node)
        shape = e.get("shape")
        if shape is not None and (not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)):
            raise ModelTypeError(name, "shape", f"{shape!r:.60} is not a list of positive ints")
        c = e.get("constraint")
        if isinstance(c, dict):
            if not c or set(c) - {"lower", "upper"}:
                raise ModelTypeError(name, "constraint", "bounds are {'lower': ..., 'upper': ...}")
            for k, node in c.items():
                _check_expr(name, f"constraint.{k}", node)
        elif c is not None and c not in CONSTRAINTS:
            raise ModelTypeError(name, "constraint", f"{c!r:.60} is not a constraint; known: "
                                 f"{', '.join(CONSTRAINTS)}")
    elif kind in ("det", "factor"):
        _check_expr(name, "expr", e.get("expr"))
    else:
        v = e.get("value")
        if not is_array_node(v):
            raise ModelTypeError(name, "value", "an array node")
        why = check_node(v)
        if why:
            raise DataError(name, "value", why)


def _check_expr(var: str, fld: str, node: Any) -> None:
    why = check_node(node)
    if why:
        raise ModelTypeError(var, fld, why)
    for path, dist in _inner_dists(node, fld):
        check_dist_node(var, dist, path)


def _inner_dists(node: Any, fld: str) -> list[tuple[str, dict[str, Any]]]:
    """The distributions inside an expression (logp), with their field paths."""
    if not is_op(node):
        return []
    out = []
    if isinstance(node.get("dist"), dict):
        out.append((f"{fld}.logp", node["dist"]))
    for key in ("args", "step", "out", "rhs"):
        for sub in node[key] if key == "args" else [node.get(key)]:
            out += _inner_dists(sub, fld)
    return out


def entry_refs(e: dict[str, Any]) -> dict[str, set[str]]:
    """The names each field of an entry refers to."""
    if e["kind"] == "rv":
        out = {fld: refs(node) for fld, node in dist_fields(e["dist"])}
        if isinstance(e.get("constraint"), dict):
            out.update({f"constraint.{k}": refs(v) for k, v in e["constraint"].items()})
        return out
    if e["kind"] in ("det", "factor"):
        return {"expr": refs(e["expr"])}
    return {}


def topo_order(by_name: dict[str, Any], deps: dict[str, set[str]]) -> list[str]:
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
    for fld, rs in entry_refs(e).items():
        if ref in rs:
            return fld
    return None


# -- shapes --------------------------------------------------------------------------------------

def _expr_shape(var: str, fld: str, node: Any, shapes: dict[str, tuple[int, ...]],
                data: dict[str, np.ndarray], slots: Any = None) -> tuple[int, ...]:
    ctx = Ctx(shapes, data, lambda d, c: dist_shape(var, f"{fld}.logp", d, c, None),
              slots or {})
    return shape_in(var, fld, node, ctx)


def _check_rv(e: dict[str, Any], obs: dict[str, Any] | None, shapes: dict[str, tuple[int, ...]],
              data: dict[str, np.ndarray]) -> tuple[int, ...]:
    name, dist = e["name"], e["dist"]
    dname = dist["dist"]
    if spec_of(dist).observed_only and obs is None:
        raise ModelTypeError(name, "dist", f"a {dname} variable must be observed (.obs)")
    if discrete(dist) and obs is None:
        raise ModelTypeError(name, "dist", f"{dname} is discrete and NUTS samples continuous "
                             "variables only: observe it, or marginalise it out (Mixture)")
    ctx = Ctx(shapes, data, lambda d, c: dist_shape(name, "dist.logp", d, c, None))
    batch, event = dist_shape(name, "dist", dist, ctx, e.get("shape"))
    natural = batch + event
    declared = tuple(e["shape"]) if e.get("shape") is not None else None
    if declared is not None:
        if not _fits(natural, declared):
            raise ShapeError(name, "shape", f"declared shape {declared} but the parameters "
                             f"give shape {natural}")
        natural = declared
    if obs is None:
        _check_constraint(e, natural, len(event), ctx)
        return natural
    values = _array(obs["value"])
    if not _fits(natural, values.shape):
        raise ShapeError(obs["name"], "value", f"observed data of shape {values.shape} does not "
                         f"match {name!r}, whose shape is {natural}")
    check_support(obs["name"], values, dist)
    return values.shape


def _fits(shape: tuple[int, ...], into: tuple[int, ...]) -> bool:
    try:
        return tuple(np.broadcast_shapes(shape, into)) == tuple(into)
    except ValueError:
        return False


def _check_constraint(e: dict[str, Any], shape: tuple[int, ...], dist_event: int, ctx: Ctx) -> None:
    c, name = e.get("constraint"), e["name"]
    if c is None:
        return
    support = support_of(e["dist"])
    if isinstance(c, dict):
        if dist_event or support not in BOUNDABLE:
            raise ModelTypeError(name, "constraint", f"bounds narrow a univariate continuous "
                                 f"distribution; {e['dist']['dist']} has support {support}")
        for k, node in c.items():
            s = shape_in(name, f"constraint.{k}", node, ctx)
            if not _fits(s, shape):
                raise ShapeError(name, f"constraint.{k}", f"shape {s} does not broadcast to "
                                 f"the variable's shape {shape}")
        lo, hi = const_array(c.get("lower")), const_array(c.get("upper"))
        if lo is not None and hi is not None and np.any(lo >= hi):
            raise DomainError(name, "constraint.upper", "upper must be greater than lower")
        return
    spec = CONSTRAINTS[c]
    if support not in spec.within:
        raise ModelTypeError(name, "constraint", f"{c!r} is not inside the support of "
                             f"{e['dist']['dist']} ({support}): its density would be 0 there")
    if dist_event > spec.event_ndim:
        raise ModelTypeError(name, "constraint", f"{c!r} is a constraint on {spec.event_ndim}-d "
                             f"values; {e['dist']['dist']}'s values are {dist_event}-d")
    if len(shape) < spec.event_ndim or (spec.square and shape[-1] != shape[-2]):
        need = "square matrices (shape=(..., K, K))" if spec.square else "a vector (shape=K)"
        raise ShapeError(name, "shape", f"{c!r} needs {need}, the variable has shape {shape}")
