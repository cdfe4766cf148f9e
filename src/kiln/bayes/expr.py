"""Expressions as plain data: the parameters of a kiln model.

A parameter is a JSON node, one of

    2.5                                   a number
    "mu"                                  a reference to a variable or data of the model
    {"array": [[1, 2], [3, 4]], "dtype": "float64"}   a constant array
    {"op": "add", "args": [node, node]}   an operation (see OPS)
    {"op": "sum", "args": [node], "axis": 0}

`Expr` is the Python face of a node: it overloads + - * / @, ** and indexing so that
`ref("a")[ref("county")] + ref("b") * ref("x")` builds the node a radon-style model needs.
Nothing here imports jax: shapes are inferred with numpy on the driver, and the agent
evaluates nodes with `evaluate(node, env, jnp)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

# op -> number of arguments
OPS: dict[str, int] = {
    "add": 2, "sub": 2, "mul": 2, "div": 2, "pow": 2, "matmul": 2, "index": 2,
    "neg": 1, "exp": 1, "log": 1, "log1p": 1, "expit": 1, "logit": 1, "sqrt": 1, "sum": 1,
}
ELEMENTWISE_BINARY = {"add", "sub", "mul", "div", "pow"}
ELEMENTWISE_UNARY = {"neg", "exp", "log", "log1p", "expit", "logit", "sqrt"}


class Expr:
    """A JSON expression node with Python operators."""

    __slots__ = ("node",)

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
    def __matmul__(self, o: Any) -> Expr: return self._bin("matmul", o)
    def __rmatmul__(self, o: Any) -> Expr: return self._bin("matmul", o, True)
    def __neg__(self) -> Expr: return Expr({"op": "neg", "args": [to_node(self)]})
    def __getitem__(self, idx: Any) -> Expr: return self._bin("index", idx)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expr) and self.node == other.node

    def __hash__(self) -> int:
        return hash(repr(self.node))

    def __repr__(self) -> str:
        return f"Expr({self.node!r})"


def ref(name: str) -> Expr:
    """A reference to a variable or data of the model, usable in arithmetic."""
    return Expr(name)


def _unary(op: str) -> Callable[[Any], Expr]:
    def f(x: Any) -> Expr:
        return Expr({"op": op, "args": [to_node(x)]})
    f.__name__ = op
    f.__doc__ = f"Elementwise {op} of an expression."
    return f


exp = _unary("exp")
log = _unary("log")
log1p = _unary("log1p")
expit = _unary("expit")
logit = _unary("logit")
sqrt = _unary("sqrt")


def matmul(a: Any, b: Any) -> Expr:
    """Matrix product `a @ b`."""
    return Expr({"op": "matmul", "args": [to_node(a), to_node(b)]})


def sum(x: Any, axis: int | None = None) -> Expr:  # noqa: A001 - mirrors numpy's name
    """Sum of all elements, or along one axis."""
    node: dict[str, Any] = {"op": "sum", "args": [to_node(x)]}
    if axis is not None:
        node["axis"] = int(axis)
    return Expr(node)


def array_node(value: Any) -> dict[str, Any]:
    """A constant array node; integer and bool arrays keep an integer dtype (indices)."""
    arr = np.asarray(value)
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        return {"array": arr.astype(np.int64).tolist(), "dtype": "int64"}
    if np.issubdtype(arr.dtype, np.floating):
        return {"array": arr.astype(np.float64).tolist(), "dtype": "float64"}
    raise TypeError(f"an array of {arr.dtype} cannot be a parameter (numbers only)")


def to_node(value: Any) -> Any:
    """Turn a Python parameter (number, name, array, Expr) into a JSON node.

    Raises TypeError for values that are none of these; the model builder turns it
    into a ModelTypeError that names the variable and the field.
    """
    if isinstance(value, Expr):
        return value.node
    if isinstance(value, bool) or value is None:
        raise TypeError(f"{value!r} is not a number, a name, an array or an expression")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return int(value) if isinstance(value, (int, np.integer)) else float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray) or (isinstance(value, (list, tuple)) and _numeric_seq(value)):
        arr = np.asarray(value)
        if arr.dtype == object:
            raise TypeError("a ragged or mixed list is not an array")
        return array_node(arr)
    if _is_device_array(value):
        return array_node(np.asarray(value))
    raise TypeError(f"{type(value).__name__} {value!r:.60} is not a number, a name, "
                    "an array or an expression")


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


def refs(node: Any) -> set[str]:
    """Every name a node refers to."""
    if isinstance(node, str):
        return {node}
    if isinstance(node, dict) and "op" in node:
        out: set[str] = set()
        for a in node["args"]:
            out |= refs(a)
        return out
    return set()


def check_node(node: Any) -> str | None:
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
    if isinstance(node, dict) and "op" in node:
        op = node["op"]
        if op not in OPS:
            return f"unknown operation {op!r}; known: {', '.join(sorted(OPS))}"
        args = node.get("args")
        if not isinstance(args, list) or len(args) != OPS[op]:
            return f"{op} takes {OPS[op]} argument(s)"
        for a in args:
            why = check_node(a)
            if why:
                return why
        return None
    return f"{type(node).__name__} {node!r:.60} is not a number, a name, an array or an expression"


def const_array(node: Any) -> np.ndarray | None:
    """The value of a constant node (number or array), else None."""
    if is_number(node):
        return np.asarray(float(node))
    if is_array_node(node):
        return np.asarray(node["array"], dtype=np.dtype(node["dtype"]))
    return None


def infer_shape(node: Any, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The shape `node` evaluates to, given the shapes of the names it refers to.

    Raises ValueError naming the operation whose shapes do not agree.
    """
    if is_number(node):
        return ()
    if isinstance(node, str):
        return tuple(shapes[node])
    if is_array_node(node):
        return np.asarray(node["array"]).shape
    op, args = node["op"], node["args"]
    arg_shapes = [infer_shape(a, shapes) for a in args]
    if op in ELEMENTWISE_UNARY:
        return arg_shapes[0]
    if op in ELEMENTWISE_BINARY:
        try:
            return tuple(np.broadcast_shapes(*arg_shapes))
        except ValueError:
            raise ValueError(f"{op}: shapes {arg_shapes[0]} and {arg_shapes[1]} "
                             "do not broadcast") from None
    if op == "matmul":
        a, b = arg_shapes
        if not a or not b:
            raise ValueError(f"matmul of a scalar (shapes {a} and {b})")
        try:
            return np.matmul(np.empty(a), np.empty(b)).shape
        except ValueError:
            raise ValueError(f"matmul: shapes {a} and {b} do not agree") from None
    if op == "index":
        x, idx = arg_shapes
        if not x:
            raise ValueError("index: cannot index a scalar")
        return tuple(idx) + tuple(x[1:])
    if op == "sum":
        x = arg_shapes[0]
        axis = node.get("axis")
        if axis is None:
            return ()
        if not -len(x) <= axis < len(x):
            raise ValueError(f"sum: axis {axis} out of range for shape {x}")
        return tuple(d for i, d in enumerate(x) if i != axis % len(x))
    raise ValueError(f"unknown operation {op!r}")


def evaluate(node: Any, env: Mapping[str, Any], xp: Any, const: Callable[[Any], Any]) -> Any:
    """Evaluate a node with array module `xp` (jax.numpy on the agent).

    `env` maps names to values; `const(node)` gives the value of a constant node
    (the compiler passes constants in as arguments of the compiled program).
    """
    if isinstance(node, str):
        return env[node]
    if not (isinstance(node, dict) and "op" in node):
        return const(node)
    op = node["op"]
    args = [evaluate(a, env, xp, const) for a in node["args"]]
    if op == "add":
        return args[0] + args[1]
    if op == "sub":
        return args[0] - args[1]
    if op == "mul":
        return args[0] * args[1]
    if op == "div":
        return args[0] / args[1]
    if op == "pow":
        return args[0] ** args[1]
    if op == "matmul":
        return xp.matmul(args[0], args[1])
    if op == "index":
        return args[0][args[1].astype("int32") if hasattr(args[1], "astype") else args[1]]
    if op == "neg":
        return -args[0]
    if op == "exp":
        return xp.exp(args[0])
    if op == "log":
        return xp.log(args[0])
    if op == "log1p":
        return xp.log1p(args[0])
    if op == "sqrt":
        return xp.sqrt(args[0])
    if op == "expit":
        return 1.0 / (1.0 + xp.exp(-args[0]))
    if op == "logit":
        return xp.log(args[0]) - xp.log1p(-args[0])
    if op == "sum":
        return xp.sum(args[0], axis=node.get("axis"))
    raise ValueError(f"unknown operation {op!r}")
