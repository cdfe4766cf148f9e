"""Expressions as plain data: the parameters of a kiln model.

A parameter is a JSON node, one of

    2.5                                   a number
    "mu"                                  a reference to a variable or data of the model
    {"array": [[1, 2], [3, 4]], "dtype": "float64"}   a constant array
    {"op": "add", "args": [node, node]}   an operation (the table `OPS`; _ops.py, _scan.py, _ode.py)
    {"op": "sum", "args": [node], "axis": 0}          an operation with static attributes
    {"slot": "carry"}                     a local value inside a scan step or an ODE right side

`Expr` is the Python face of a node: it overloads + - * / @ ** < <= > >= and indexing
(NumPy's meaning) so `ref("a")[ref("county")] + ref("b") * ref("x")` builds the node a
radon-style model needs. Nothing here imports jax: the driver infers shapes with numpy,
and the agent evaluates nodes with `evaluate(node, env, jnp, const)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ..errors import ModelTypeError


class NodeError(ValueError):
    """A node that does not check: `kind` is "shape", "type" or "data" (ShapeError,
    ModelTypeError, DataError)."""

    def __init__(self, message: str, kind: str = "shape") -> None:
        self.kind = kind
        super().__init__(message)


class Ctx(NamedTuple):
    """What shape inference knows: every name's shape, data values, distribution shapes."""

    shapes: Mapping[str, tuple[int, ...]]
    data: Mapping[str, np.ndarray]               # data name -> value (index checks)
    dist_shape: Callable[[Any, Any], tuple[tuple[int, ...], tuple[int, ...]]]  # (node, ctx)
    slots: Mapping[str, tuple[int, ...]] = {}     # slot name -> shape inside a step


@dataclass(frozen=True)
class Op:
    """One operation: how many arguments, its static attributes, its shape and its value."""

    arity: int | None                       # None: one or more (stack, concatenate)
    shape: Callable[[list[tuple[int, ...]], dict[str, Any], Ctx], tuple[int, ...]]
    run: Callable[[Any, list[Any], dict[str, Any]], Any]   # (xp, args, node) -> value
    statics: dict[str, Callable[[Any], bool]] = field(default_factory=dict)  # key -> is valid
    index_args: bool = False    # args after the first are integer indices (kept as int64)
    required: tuple[str, ...] = ()  # static keys a node must have
    subgraphs: tuple[str, ...] = ()   # keys holding expression graphs over slots
    slots: Callable[[dict[str, Any]], tuple[str, ...]] | None = None  # node -> slot names there
    evaluate: Callable[..., Any] | None = None  # own evaluation (scan, ode, logp)
    # (field, expression) pairs held outside args, e.g. the parameters of logp's distribution
    inner: Callable[[dict[str, Any]], list[tuple[str, Any]]] | None = None


OPS: dict[str, Op] = {}


def register(name: str, op: Op) -> None:
    OPS[name] = op


class Expr:
    """A JSON expression node with Python operators.

    NumPy defers to it (`__array_ufunc__ = None`): `np.array([1., 0.]) * ref("theta")`
    is an Expr, not an object array. `==` compares nodes (Exprs are hashable); use
    `ops.eq` for an elementwise equality.
    """

    __slots__ = ("node",)
    __array_ufunc__ = None

    def __init__(self, node: Any) -> None:
        self.node = node

    def _bin(self, op: str, other: Any, reverse: bool = False) -> Expr:
        a, b = to_node(self), to_node(other)
        return Expr({"op": op, "args": [b, a] if reverse else [a, b]})

    def __add__(self, o: Any) -> Expr: return self._bin("add", o)
    def __radd__(self, o: Any) -> Expr: return self._bin("add", o, True)
    def __sub__(self, o: Any) -> Expr: return self._bin("sub", o)
    def __rsub__(self, o: Any) -> Expr: return self._bin("sub", o, True)
    def __mul__(self, o: Any) -> Expr: return self._bin("mul", o)
    def __rmul__(self, o: Any) -> Expr: return self._bin("mul", o, True)
    def __truediv__(self, o: Any) -> Expr: return self._bin("div", o)
    def __rtruediv__(self, o: Any) -> Expr: return self._bin("div", o, True)
    def __pow__(self, o: Any) -> Expr: return self._bin("pow", o)
    def __rpow__(self, o: Any) -> Expr: return self._bin("pow", o, True)
    def __matmul__(self, o: Any) -> Expr: return self._bin("matmul", o)
    def __rmatmul__(self, o: Any) -> Expr: return self._bin("matmul", o, True)
    def __lt__(self, o: Any) -> Expr: return self._bin("lt", o)
    def __le__(self, o: Any) -> Expr: return self._bin("le", o)
    def __gt__(self, o: Any) -> Expr: return self._bin("gt", o)
    def __ge__(self, o: Any) -> Expr: return self._bin("ge", o)
    def __neg__(self) -> Expr: return Expr({"op": "neg", "args": [to_node(self)]})
    def __abs__(self) -> Expr: return Expr({"op": "abs", "args": [to_node(self)]})

    def __getitem__(self, idx: Any) -> Expr:
        return Expr(index_node(self.node, idx))

    @property
    def T(self) -> Expr:  # noqa: N802 - numpy's name
        return Expr({"op": "transpose", "args": [self.node]})

    def reshape(self, *shape: Any) -> Expr:
        dims = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return Expr({"op": "reshape", "args": [self.node], "shape": [int(d) for d in dims]})

    def sum(self, axis: int | None = None) -> Expr:
        return _reduce("sum", self, axis)

    def mean(self, axis: int | None = None) -> Expr:
        return _reduce("mean", self, axis)

    def __bool__(self) -> bool:
        raise ModelTypeError(None, None, "an expression has no truth value on the driver: "
                             "use kiln.bayes.where for a choice inside the model")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expr) and self.node == other.node

    def __hash__(self) -> int:
        return hash(repr(self.node))

    def __repr__(self) -> str:
        return f"Expr({self.node!r})"


def _reduce(op: str, x: Any, axis: int | None) -> Expr:
    node: dict[str, Any] = {"op": op, "args": [to_node(x)]}
    if axis is not None:
        node["axis"] = int(axis)
    return Expr(node)


def index_node(x: Any, idx: Any) -> dict[str, Any]:
    """The node of `x[idx]`, built with NumPy's rules for what `idx` may be (_indexing.py
    has the node's format, shape rule and value)."""
    items: list[Any] = []
    args: list[Any] = [x]
    for item in idx if isinstance(idx, tuple) else (idx,):
        if isinstance(item, bool) or isinstance(item, (float, np.floating)):
            raise _bad_index(x, f"{item!r} is not an index (an int, a slice, None, ..., or "
                             "integer data)")
        if isinstance(item, (int, np.integer)):
            items.append(int(item))
        elif isinstance(item, slice):
            parts = [item.start, item.stop, item.step]
            if not all(v is None or (isinstance(v, (int, np.integer)) and not isinstance(v, bool))
                       for v in parts):
                raise _bad_index(x, f"slice {item} needs int bounds (a bound that is an "
                                 "expression is not supported: index with integer data instead)")
            items.append({"slice": [None if v is None else int(v) for v in parts]})
        elif item is None:
            items.append(None)
        elif item is Ellipsis:
            items.append("...")
        else:
            if _is_bool_array(item):
                raise _bad_index(x, "a boolean mask is not supported (its shape depends on the "
                                 "data)")
            try:
                node = to_node(item)
            except TypeError as e:
                raise _bad_index(x, f"index: {e}") from None
            items.append({"arg": len(args) - 1})
            args.append(node)
    if items == [{"arg": 0}]:
        return {"op": "index", "args": args}   # x[idx]: the short form, as written before items
    return {"op": "index", "args": args, "items": items}


def _is_bool_array(item: Any) -> bool:
    if isinstance(item, np.ndarray):
        return item.dtype == bool
    return isinstance(item, (list, tuple)) and bool(item) and all(isinstance(b, bool) for b in item)


def _bad_index(x: Any, message: str) -> ModelTypeError:
    return ModelTypeError(x if isinstance(x, str) else None, "index", message)


def ref(name: str) -> Expr:
    """A reference to a variable or data of the model, usable in arithmetic."""
    return Expr(name)


def array_node(value: Any) -> dict[str, Any]:
    """A constant array node; integer and bool arrays keep an integer dtype (indices)."""
    arr = np.asarray(value)
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        return {"array": arr.astype(np.int64).tolist(), "dtype": "int64"}
    if np.issubdtype(arr.dtype, np.floating):
        return {"array": arr.astype(np.float64).tolist(), "dtype": "float64"}
    raise ModelTypeError(None, None, f"an array of {arr.dtype} cannot be a parameter (numbers only)")


def to_node(value: Any) -> Any:
    """Turn a Python parameter (number, name, array, Expr, list of these) into a JSON node.

    A list that holds an expression is a stack of its items (`[ref("t"), 1 - ref("t")]`).
    Raises ModelTypeError (without a variable) for values that are none of these; the
    model builder raises it again naming the variable and the field.
    """
    if isinstance(value, Expr):
        return value.node
    if isinstance(value, bool) or value is None:
        raise ModelTypeError(None, None, f"{value!r} is not a number, a name, an array or an expression")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return int(value) if isinstance(value, (int, np.integer)) else float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray) or (isinstance(value, (list, tuple)) and _numeric_seq(value)):
        arr = np.asarray(value)
        if arr.dtype == object:
            raise ModelTypeError(None, None, "a ragged or mixed list is not an array")
        return array_node(arr)
    if isinstance(value, (list, tuple)) and value:
        return {"op": "stack", "args": [to_node(v) for v in value], "axis": 0}
    if _is_device_array(value):
        return array_node(np.asarray(value))
    raise ModelTypeError(None, None, f"{type(value).__name__} {value!r:.60} is not a number, "
                         "a name, an array or an expression")


def _numeric_seq(value: Any) -> bool:
    for v in value:
        if isinstance(v, (list, tuple)):
            if not _numeric_seq(v):
                return False
        elif isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            return False
    return True


def _is_device_array(value: Any) -> bool:
    return hasattr(value, "__array__") and hasattr(value, "shape") and hasattr(value, "dtype")


def is_array_node(node: Any) -> bool:
    return isinstance(node, dict) and "array" in node


def is_number(node: Any) -> bool:
    return isinstance(node, (int, float)) and not isinstance(node, bool)


def is_op(node: Any) -> bool:
    return isinstance(node, dict) and "op" in node


def is_slot(node: Any) -> bool:
    return isinstance(node, dict) and "slot" in node


def refs(node: Any) -> set[str]:
    """Every model name a node refers to (slots are local, not names)."""
    if isinstance(node, str):
        return {node}
    if not is_op(node):
        return set()
    out: set[str] = set()
    for a in node.get("args", []):
        out |= refs(a)
    op = OPS.get(node["op"])
    for key in op.subgraphs if op else ():
        out |= refs(node.get(key))
    for _, sub in op.inner(node) if op and op.inner else ():
        out |= refs(sub)
    return out


def check_node(node: Any, slots: tuple[str, ...] = ()) -> str | None:
    """Why `node` is not a well-formed expression node, or None when it is."""
    if is_number(node):
        return None if math.isfinite(node) else f"{node} is not a finite number"
    if isinstance(node, str):
        return None if node else "an empty name"
    if is_array_node(node):
        if node.get("dtype") not in ("float64", "int64"):
            return f"array dtype {node.get('dtype')!r} (float64 or int64)"
        try:
            arr = np.asarray(node["array"], dtype=np.float64)
        except (TypeError, ValueError):
            return "a ragged or non-numeric array"
        return None if np.all(np.isfinite(arr)) else "an array with NaN or inf"
    if is_slot(node):
        return None if node["slot"] in slots else (
            f"slot {node['slot']!r} used outside a scan step or ODE right-hand side")
    if is_op(node):
        name = node["op"]
        op = OPS.get(name)
        if op is None:
            return f"unknown operation {name!r}; known: {', '.join(sorted(OPS))}"
        args = node.get("args")
        if not isinstance(args, list) or (op.arity is not None and len(args) != op.arity) \
                or not args:
            return f"{name} takes {op.arity or 'one or more'} argument(s)"
        for key, ok in op.statics.items():
            if key in node and not ok(node[key]):
                return f"{name}: bad {key} {node[key]!r:.60}"
        missing = [k for k in op.required if k not in node]
        if missing:
            return f"{name} needs {missing[0]!r}"
        extra = set(node) - {"op", "args", *op.statics, *op.subgraphs}
        if extra:
            return f"{name} has no attribute {sorted(extra)[0]!r}"
        for a in args:
            why = check_node(a, slots)
            if why:
                return why
        for fld, sub in op.inner(node) if op.inner else ():
            why = check_node(sub, slots)
            if why:
                return f"{name}.{fld}: {why}"
        inner = op.slots(node) if op.slots else ()
        for key in op.subgraphs:
            if key in node:
                why = check_node(node[key], inner)
                if why:
                    return f"{name}.{key}: {why}"
        return None
    return f"{type(node).__name__} {node!r:.60} is not a number, a name, an array or an expression"


def const_array(node: Any) -> np.ndarray | None:
    """The value of a constant node (number or array), else None."""
    if is_number(node):
        return np.asarray(node)
    if is_array_node(node):
        return np.asarray(node["array"], dtype=np.dtype(node["dtype"]))
    return None


def infer_shape(node: Any, ctx: Ctx | Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The shape `node` evaluates to. Raises NodeError naming the operation that fails."""
    if not isinstance(ctx, Ctx):
        ctx = Ctx(ctx, {}, _no_dists)
    if is_number(node):
        return ()
    if isinstance(node, str):
        return tuple(ctx.shapes[node])
    if is_array_node(node):
        return np.asarray(node["array"]).shape
    if is_slot(node):
        return tuple(ctx.slots[node["slot"]])
    op = OPS[node["op"]]
    if op.evaluate is not None:   # scan, ode, logp infer their own argument shapes
        return tuple(op.shape([], node, ctx))
    arg_shapes = [infer_shape(a, ctx) for a in node["args"]]
    return tuple(op.shape(arg_shapes, node, ctx))


def _no_dists(node: Any, ctx: Any) -> Any:
    raise NodeError("a distribution inside an expression needs the model's context")


def evaluate(node: Any, env: Mapping[str, Any], xp: Any, const: Callable[[Any], Any],
             slots: Mapping[str, Any] | None = None) -> Any:
    """Evaluate a node with array module `xp` (jax.numpy on the agent).

    `env` maps names to values; `const(node)` gives the value of a constant node
    (the compiler passes constants in as arguments of the compiled program); `slots`
    the local values inside a scan step or ODE right-hand side.
    """
    if isinstance(node, str):
        return env[node]
    if is_slot(node):
        return (slots or {})[node["slot"]]
    if not is_op(node):
        return const(node)
    op = OPS[node["op"]]
    if op.evaluate is not None:
        return op.evaluate(node, env, xp, const, slots)
    args = [evaluate(a, env, xp, const, slots) for a in node["args"]]
    return op.run(xp, args, node)
