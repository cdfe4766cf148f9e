"""Indexing with NumPy's meaning: `a[0, 1]`, `b[0:2]`, `X[:, 0]`, `g[:, None]`, `a[idx]`.

The node keeps the index's structure apart from its values:

    {"op": "index", "args": [x, idx_0, ...], "items": [0, {"slice": [0, 2, null]},
                                                       null, "...", {"arg": 0}]}

An item is a static int, a slice, `null` (a new axis), `"..."` (Ellipsis) or
`{"arg": k}`, which is `args[k + 1]`: an integer array, integer data, or an expression
over data only. A node without "items" (written before this format) means `x[args[1]]`.
Anything else fails where the index is written (`expr.index_node`, which `Expr[...]`
calls), with a ModelTypeError naming the variable.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._expr import (
    Ctx,
    NodeError,
    Op,
    const_array,
    evaluate,
    is_op,
    refs,
    register,
)


def items_of(node: dict[str, Any]) -> list[Any]:
    return node["items"] if "items" in node else [{"arg": 0}]


def _items_ok(items: Any) -> bool:
    if not isinstance(items, list):
        return False
    for it in items:
        if it is None or it == "..." or (isinstance(it, int) and not isinstance(it, bool)):
            continue
        if isinstance(it, dict) and set(it) == {"slice"} and isinstance(it["slice"], list) \
                and len(it["slice"]) == 3 and all(v is None or isinstance(v, int)
                                                  for v in it["slice"]):
            continue
        if isinstance(it, dict) and set(it) == {"arg"} and isinstance(it["arg"], int):
            continue
        return False
    return sum(it == "..." for it in items) <= 1


def _index_values(node: Any, ctx: Ctx) -> np.ndarray | None:
    """The integer values of an index argument when the driver knows them, else None.

    Raises NodeError("type") when the index is not integer-valued or not data.
    """
    v = const_array(node)
    if v is None and isinstance(node, str):
        if node not in ctx.data:
            raise NodeError(f"index {node!r} must be integer data", "type")
        v = ctx.data[node]
    elif v is None:
        names = refs(node)
        if not names <= set(ctx.data):
            raise NodeError(f"an index may use data only; it uses {', '.join(sorted(names - set(ctx.data)))}",
                            "type")
        if not _numpy_safe(node):
            return None
        v = np.asarray(evaluate(node, ctx.data, np, lambda n: const_array(n)))
    if not (np.issubdtype(v.dtype, np.integer) or (v.dtype.kind == "f" and np.all(v == np.round(v))
                                                    and is_op(node))):
        raise NodeError("an index must be an integer array", "type")
    return v.astype(np.int64)


_SAFE = {"add", "sub", "mul", "neg", "index", "stack", "concatenate", "reshape", "transpose"}


def _numpy_safe(node: Any) -> bool:
    if not is_op(node):
        return True
    return node["op"] in _SAFE and all(_numpy_safe(a) for a in node["args"])


def _shape(arg_shapes: list[tuple[int, ...]], node: dict[str, Any], ctx: Ctx) -> tuple[int, ...]:
    x = arg_shapes[0]
    items = items_of(node)
    if not _items_ok(items) or any(isinstance(it, dict) and "arg" in it
                                   and not 0 <= it["arg"] < len(node["args"]) - 1 for it in items):
        raise NodeError(f"index: bad items {items!r:.80}", "type")
    n_axes = sum(1 for it in items if it is not None and it != "...")
    if n_axes > len(x):
        raise NodeError(f"index: too many indices ({n_axes}) for shape {x}")
    axis, key = 0, []
    for it in items:
        if it is None:
            key.append(None)
            continue
        if it == "...":
            key.append(Ellipsis)
            axis += len(x) - n_axes
            continue
        n = x[axis]
        if isinstance(it, int):
            vals = np.asarray(it)
            key.append(it if -n <= it < n else 0)
        elif "slice" in it:
            key.append(slice(*it["slice"]))
            vals = None
        else:
            arg = node["args"][it["arg"] + 1]
            vals = _index_values(arg, ctx)
            key.append(np.zeros(arg_shapes[it["arg"] + 1], dtype=np.int64))
        if vals is not None and vals.size and (vals.min() < -n or vals.max() >= n):
            raise NodeError(f"index values must be in [0, {n - 1}] (0-based; negative counts "
                            f"from the end), got {vals.min()}..{vals.max()} on axis {axis} of "
                            f"shape {x}")
        axis += 1
    if any(isinstance(k, slice) and k.step == 0 for k in key):
        raise NodeError("index: a slice step of 0")
    return np.broadcast_to(np.zeros(()), x)[tuple(key)].shape


def _run(xp: Any, args: list[Any], node: dict[str, Any]) -> Any:
    key = []
    for it in items_of(node):
        if it is None or isinstance(it, int):
            key.append(it)
        elif it == "...":
            key.append(Ellipsis)
        elif "slice" in it:
            key.append(slice(*it["slice"]))
        else:
            v = args[it["arg"] + 1]
            key.append(v.astype("int32") if hasattr(v, "astype") else int(v))
    return args[0][tuple(key)]


register("index", Op(None, _shape, _run, statics={"items": _items_ok}, index_args=True))
